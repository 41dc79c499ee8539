"""DESIGN §4.4, end to end: with ``privacy.report_private_metrics`` on, and under DP, what
the summary and the ledgers of a whole run say was sent to the server and kept."""

from __future__ import annotations

import math

import pytest

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.records.audit import audit_run
from helpers.report_privacy import (
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

