"""DESIGN §4.4: nothing computed on private data leaves a client outside the accounting.

The adversary is the server (or anyone reading what reaches it): it reads every
``RoundReport.metrics`` a client sends. Without the report policy it would learn, every
round, the exact share of correct predictions on each client's held-out private records
(``val_metric``, 20 % of the shard, records no DP mechanism touches) and the exact mean
training loss (``task_loss``); under client-level noise also ``cl_loss``/``test_metric``
(computed from the un-noised model, around noise of std ~121 on the releases) and under
secagg the client's own clipped-coordinate count (``clipped_values``, from its noisy share
alone, before any sum). These tests drive the simulator and inspect exactly the messages
the server receives.
"""

from __future__ import annotations

import json
import math

import pytest
from tiny import tiny_config

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import Finish, RoundReport
from fedmuscle_secure.records.audit import audit_run
from fedmuscle_secure.simulator import build_federation, run_round

PRIVATE = {"val_metric", "task_loss"}
FROM_THE_MODEL = {"test_metric", "cl_loss", "cl_steps", "clipped_values"}

RECORD_LEVEL = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "expected_batch_size": 8}}
CLIENT_LEVEL = {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}
SECAGG = {"protection": "secagg", "muscle.method": "muscle_sum", "muscle.exchange": "per_epoch"}


def _config(privacy: dict, **over):
    return tiny_config(**{"training.rounds": 1, "compare_local": False, "privacy": privacy,
                          **over})


def _round_as_the_server_sees_it(cfg, record_dir):
    """One round of the simulator; the reports the server received, and the rows."""
    fed = build_federation(cfg, make_split(cfg), cfg.muscle.method, record_dir=record_dir)
    received: list[RoundReport] = []
    handle = fed.server.handle

    def spy(msg):
        if isinstance(msg, RoundReport):
            received.append(msg)
        return handle(msg)

    fed.server.handle = spy
    try:
        rows = run_round(fed, 1)
    finally:
        fed.close()
    assert sorted(r.client for r in received) == ["a", "b", "c"]
    return fed, {r.client: r for r in received}, rows


def _ledger_reports(record_dir, client):
    lines = (record_dir / "ledger" / f"{client}.jsonl").read_text().splitlines()
    return [e["body"] for e in map(json.loads, lines) if e["kind"] == "report"]


@pytest.mark.parametrize("privacy,over,withheld", [
    (RECORD_LEVEL, {}, PRIVATE),
    (CLIENT_LEVEL, {}, PRIVATE | FROM_THE_MODEL - {"clipped_values"}),
    ({**RECORD_LEVEL, **CLIENT_LEVEL}, {}, PRIVATE | FROM_THE_MODEL - {"clipped_values"}),
    (CLIENT_LEVEL, SECAGG, PRIVATE | FROM_THE_MODEL),
], ids=["record-level", "client-level", "both", "secagg-client-level"])
def test_server_reading_reports_under_dp_gets_nothing_the_accounting_does_not_cover(
        tmp_path, privacy, over, withheld):
    cfg = _config(privacy, **over)
    fed, received, rows = _round_as_the_server_sees_it(cfg, tmp_path)
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
        (entry,) = _ledger_reports(tmp_path, name)
        assert entry["round"] == 1 and entry["sent"] == sorted(report.metrics)
        assert entry["withheld"] == sorted(report.withheld)
        assert entry["report_private_metrics"] is False


def test_every_metric_a_client_computes_is_classified():
    """A metric added later without a class would be withheld (fail closed); this keeps the
    classification complete for what the client computes today, in every protected mode."""
    from fedmuscle_secure.client.report_policy import METRIC_SOURCES

    for privacy, over in [(RECORD_LEVEL, SECAGG), (CLIENT_LEVEL, {})]:
        cfg = _config(privacy, **over)
        fed, received, _ = _round_as_the_server_sees_it(cfg, None)  # no ledger: no files
        for name, client in fed.clients.items():
            closing = client.handle(Finish(name, 2))[0]  # the deployment's final report
            for report in (received[name], closing):
                computed = {*report.metrics, *report.withheld}
                assert computed == set(client.report_gate.kept[report.round])
                assert computed <= set(METRIC_SOURCES), computed - set(METRIC_SOURCES)


@pytest.mark.slow
def test_report_private_metrics_on_sends_them_and_the_summary_and_ledger_say_so(tmp_path):
    cfg = _config({**RECORD_LEVEL, "report_private_metrics": True}, **SECAGG)
    fed, received, _ = _round_as_the_server_sees_it(cfg, tmp_path / "sim")
    for name, report in received.items():
        assert PRIVATE | FROM_THE_MODEL <= set(report.metrics) and report.withheld == ()
        assert report.metrics["val_metric"] == fed.clients[name].report_gate.kept[1]["val_metric"]
        (entry,) = _ledger_reports(tmp_path / "sim", name)
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
    cfg = _config(RECORD_LEVEL).with_overrides(compare_local=True)
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


def test_deployed_server_marks_kept_metrics_not_reported_and_organisations_keep_theirs(tmp_path):
    """The gRPC server's own code path (coordinator, rows, summary) without sockets: client
    threads are replaced by one pump that hands each outbox message to its client and
    submits the replies; each organisation records with the deployed client's
    :class:`OwnRecords`. The server's rows say `not reported` (not 0, not a crash), each
    organisation's own metrics.csv and `round_end` events hold its full metrics."""
    import queue
    import threading

    from fedmuscle_secure.client.grpc_client import OwnRecords
    from fedmuscle_secure.client.report_policy import NOT_REPORTED
    from fedmuscle_secure.server.grpc_server import Coordinator, ServeSettings, _rounds

    from fedmuscle_secure.data import get_task
    from fedmuscle_secure.experiment.rundir import RunDir
    from fedmuscle_secure.experiment.summary import write_summary

    cfg = _config(CLIENT_LEVEL, **SECAGG)
    split = make_split(cfg)
    fed = build_federation(cfg, split, "muscle_sum", record_dir=tmp_path / "orgs")
    coordinator = Coordinator(fed.server, final_round=2)
    boxes = {c: coordinator.connect(c) for c in fed.clients}
    records = {c: OwnRecords(RunDir(tmp_path / f"org-{c}"), cfg, "muscle_sum", client)
               for c, client in fed.clients.items()}
    stop, failed = threading.Event(), []

    def pump() -> None:
        try:
            while not stop.is_set():
                for c, box in boxes.items():
                    try:
                        msg = box.get(timeout=0.01)
                    except queue.Empty:
                        continue
                    for reply in fed.clients[c].handle(msg):
                        if isinstance(reply, RoundReport):
                            records[c].record(reply, final=reply.round == 2)
                        coordinator.submit(c, reply)
        except Exception as exc:  # noqa: BLE001 - surfaced below, not lost in the thread
            failed.append(exc)

    for c in fed.clients:
        RunDir(tmp_path / f"org-{c}").create()
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    run = RunDir(tmp_path / "server")
    run.create()
    tasks = {c.name: (c, get_task(c.task, split.num_classes)) for c in cfg.clients}
    try:
        rows = _rounds(cfg, run, coordinator, ServeSettings(60.0, 600.0), "muscle_sum", [], 1,
                       tasks, write_summary)
    finally:
        stop.set()
        thread.join()
        fed.close()
    assert not failed, failed
    kept = {"test_metric", "val_metric", "task_loss"}  # and, in rounds, the contrastive ones
    for row in _csv(run.metrics):
        more = {"cl_loss", "cl_steps", "clipped_values"} if row["round"] != "final" else set()
        assert all(row[k] == NOT_REPORTED for k in kept | more), row
        assert float(row["eps_client"]) > 0
    assert {r["round"] for r in rows} == {1, "final"}
    summary = run.summary.read_text()
    assert f"a={NOT_REPORTED}" in summary  # the final test metric line
    assert f"| a | 0 | {NOT_REPORTED} |" in summary  # secagg: aborted sent, clipped kept
    assert "`test_metric` (the model on public data)" in summary
    assert "`val_metric` (private records)" in summary
    for c in fed.clients:
        own = _csv(tmp_path / f"org-{c}" / "metrics.csv")
        assert [r["round"] for r in own] == ["1", "final"]
        assert all(not math.isnan(float(r["val_metric"])) and float(r["test_metric"]) >= 0
                   for r in own)
        events = [json.loads(x) for x in (tmp_path / f"org-{c}" / "events.jsonl")
                  .read_text().splitlines()]
        ends = [e for e in events if e["event"] == "round_end"]
        assert [e["round"] for e in ends] == [1, "final"]
        assert "val_metric" in ends[0]["metrics"] and "val_metric" in ends[0]["withheld"]
        assert "val_metric" not in ends[0]["sent"]


def _csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("privacy,expected", [
    ({}, True),                                            # no DP: no guarantee to protect
    (RECORD_LEVEL, False), (CLIENT_LEVEL, False),          # any DP: off by default
    ({**RECORD_LEVEL, "report_private_metrics": True}, True),
    ({"report_private_metrics": False}, False),
])
def test_report_private_metrics_default_follows_dp_and_an_explicit_value_wins(privacy, expected):
    from fedmuscle_secure.client.report_policy import reports_private_metrics

    assert reports_private_metrics(_config(privacy)) is expected


def test_report_private_metrics_must_be_a_boolean():
    from fedmuscle_secure.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        _config({"report_private_metrics": "maybe"})
    assert exc.value.field == "privacy.report_private_metrics"
