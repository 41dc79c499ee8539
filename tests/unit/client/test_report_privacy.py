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

from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import Finish, RoundReport
from fedmuscle_secure.simulator import build_federation
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


def test_deployed_server_marks_kept_metrics_not_reported_and_organisations_keep_theirs(tmp_path):
    """The gRPC server's own code path (coordinator, rows, summary) without sockets: client
    threads are replaced by one pump that hands each outbox message to its client and
    submits the replies; each organisation records with the deployed client's
    :class:`OwnRecords`. The server's rows say `not reported` (not 0, not a crash), each
    organisation's own metrics.csv and `round_end` events hold its full metrics."""
    import queue
    import threading

    from fedmuscle_secure.client.grpc.process import OwnRecords
    from fedmuscle_secure.data import get_task
    from fedmuscle_secure.experiment.rundir import RunDir
    from fedmuscle_secure.messages import NOT_REPORTED
    from fedmuscle_secure.server.grpc.process import Coordinator, ServerRun, ServeSettings

    cfg = report_config(CLIENT_LEVEL, **SECAGG)
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
    metrics = {c.name: get_task(c.task, split.num_classes).metric for c in cfg.clients}
    try:
        rows = ServerRun(cfg, run, coordinator, ServeSettings(60.0, 600.0), "muscle_sum",
                         metrics).rounds([], 1)
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

    assert reports_private_metrics(report_config(privacy)) is expected


def test_report_private_metrics_must_be_a_boolean():
    from fedmuscle_secure.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        report_config({"report_private_metrics": "maybe"})
    assert exc.value.field == "privacy.report_private_metrics"
