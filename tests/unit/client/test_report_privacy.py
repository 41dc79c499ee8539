"""DESIGN §4.4: nothing computed on private data leaves a client outside the accounting.

The adversary is the server (or anyone reading what reaches it): it reads every
``RoundReport.metrics`` a client sends. Without the report policy it would learn, every
round, the exact share of correct predictions on each client's held-out private records
(``val_metric``, 20 % of the shard, records no DP mechanism touches) and the exact mean
training loss (``task_loss``); under client-level noise also ``cl_loss``/``test_metric``
(computed from the un-noised model, around noise of std ~121 on the releases) and under
secagg the client's own clipped-coordinate count (``clipped_values``, from its noisy share
alone, before any sum). The tests that drive the simulator under each DP setting and
inspect exactly the messages the server receives are in
tests/e2e/test_report_privacy_run.py; here, the deployed server's rows and summary when
metrics are kept, and the setting's default.
"""

from __future__ import annotations

import json
import math

import pytest

from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import RoundReport
from fedmuscle_secure.simulator import build_federation
from helpers.report_privacy import CLIENT_LEVEL, RECORD_LEVEL, SECAGG, report_config


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
