"""DESIGN §4.4, end to end: with ``privacy.report_private_metrics`` on, and under DP, what
the summary and the ledgers of a whole run say was sent to the server and kept; and, over a
simulated round under each DP setting (the server as the adversary, reading every
``RoundReport``), that nothing the accounting does not cover reaches it and that every
metric a client computes has a class (tests/unit/client/test_report_privacy.py holds the
deployed server's rows and the setting's default)."""

from __future__ import annotations

import math

import pytest

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.messages import Finish
from fedmuscle_secure.records.audit import audit_run
from helpers.report_privacy import (
    CLIENT_LEVEL,
    FROM_THE_MODEL,
    PRIVATE,
    RECORD_LEVEL,
    SECAGG,
    ledger_reports,
    report_config,
    round_as_the_server_sees_it,
)


@pytest.mark.slow
def test_report_private_metrics_on_sends_them_and_the_summary_and_ledger_say_so(tmp_path):
    cfg = report_config({**RECORD_LEVEL, "report_private_metrics": True}, **SECAGG)
    fed, received, _ = round_as_the_server_sees_it(cfg, tmp_path / "sim")
    for name, report in received.items():
        assert PRIVATE | FROM_THE_MODEL <= set(report.metrics) and report.withheld == ()
        assert report.metrics["val_metric"] == fed.clients[name].report_gate.kept[1]["val_metric"]
        (entry,) = ledger_reports(tmp_path / "sim", name)
        assert entry["report_private_metrics"] is True and "val_metric" in entry["sent"]
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    summary = (res.run_dir / "summary.md").read_text()
    section = summary.split("## Metrics sent to the server", 1)[1].split("\n## ", 1)[0]
    assert "`privacy.report_private_metrics` is on" in section
    assert "val_metric" in section.split("Sent to the server:", 1)[1].split("\n", 1)[0]
    assert "Kept at the client" not in section
    assert audit_run(res.run_dir).exit_code() == 0  # `report` entries: audit accepts them


@pytest.mark.slow
def test_summary_under_dp_lists_what_was_kept_and_labels_the_local_reference(tmp_path):
    cfg = report_config(RECORD_LEVEL).with_overrides(compare_local=True)
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    summary = (res.run_dir / "summary.md").read_text()
    own = max(float(r["eps_record"]) for r in res.rows
              if r["method"] == "local" and r["round"] == "final")
    fed = max(float(r["eps_record"]) for r in res.rows
              if r["method"] == "muscle" and r["round"] == "final")
    assert own > 0 and "**`local` is an out-of-budget reference.**" in summary
    assert f"its own record-level ε up to {own:.3f}" in summary
    assert f"at most ε = {own + fed:.3f}" in summary and "no ledger" in summary
    assert sorted(p.stem for p in (res.run_dir / "ledger").iterdir()) == ["a", "b", "c"]
    section = summary.split("## Metrics sent to the server", 1)[1].split("\n## ", 1)[0]
    kept = section.split("Kept at the client:", 1)[1].split("\n", 1)[0]
    sent = section.split("Sent to the server:", 1)[1].split("\n", 1)[0]
    assert "val_metric" in kept and "task_loss" in kept and "val_metric" not in sent
    assert "test_metric" in sent and "eps_record" in sent
    for row in res.rows:  # the simulator plays every organisation: its rows are complete
        assert not math.isnan(float(row["val_metric"]))
    assert "None" not in summary and "DP-SGD: on (" in summary  # settings given, never None
    assert audit_run(res.run_dir).exit_code() == 0


@pytest.mark.slow
@pytest.mark.parametrize("privacy,over,withheld", [
    (RECORD_LEVEL, {}, PRIVATE),
    (CLIENT_LEVEL, {}, PRIVATE | FROM_THE_MODEL - {"clipped_values"}),
    ({**RECORD_LEVEL, **CLIENT_LEVEL}, {}, PRIVATE | FROM_THE_MODEL - {"clipped_values"}),
    (CLIENT_LEVEL, SECAGG, PRIVATE | FROM_THE_MODEL),
], ids=["record-level", "client-level", "both", "secagg-client-level"])
def test_server_reading_reports_under_dp_gets_nothing_the_accounting_does_not_cover(
        tmp_path, privacy, over, withheld):
    cfg = report_config(privacy, **over)
    fed, received, rows = round_as_the_server_sees_it(cfg, tmp_path)
    for name, report in received.items():
        # the attack: what reached the server
        assert not withheld & set(report.metrics), (name, sorted(report.metrics))
        assert set(report.withheld) == withheld & set(rows[name])
        assert {"eps_record", "eps_client"} <= set(report.metrics)  # accounting still leaves
        if withheld == PRIVATE:  # record-level only: the DP model on public data may leave
            assert {"test_metric", "cl_loss"} <= set(report.metrics)
        # the client's own rows are complete, with its own values
        kept = fed.clients[name].report_gate.kept[1]
        assert withheld & set(rows[name]) == withheld & set(kept)
        for metric in withheld & set(kept):
            assert rows[name][metric] == kept[metric] or math.isnan(kept[metric])
        assert not math.isnan(rows[name]["val_metric"])
        # its ledger says what left
        (entry,) = ledger_reports(tmp_path, name)
        assert entry["round"] == 1 and entry["sent"] == sorted(report.metrics)
        assert entry["withheld"] == sorted(report.withheld)
        assert entry["report_private_metrics"] is False


@pytest.mark.slow
def test_every_metric_a_client_computes_is_classified():
    """A metric added later without a class would be withheld (fail closed); this keeps the
    classification complete for what the client computes today, in every protected mode."""
    from fedmuscle_secure.messages import METRIC_SOURCES

    for privacy, over in [(RECORD_LEVEL, SECAGG), (CLIENT_LEVEL, {})]:
        cfg = report_config(privacy, **over)
        fed, received, _ = round_as_the_server_sees_it(cfg, None)  # no ledger: no files
        for name, client in fed.clients.items():
            closing = client.handle(Finish(name, 2))[0]  # the deployment's final report
            for report in (received[name], closing):
                computed = {*report.metrics, *report.withheld}
                assert computed == set(client.report_gate.kept[report.round])
                assert computed <= set(METRIC_SOURCES), computed - set(METRIC_SOURCES)
