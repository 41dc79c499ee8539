"""A deployed organisation that crashed comes back on its own run directory (real processes on
127.0.0.1), and one started on a finished run's directory is refused.

The server is SIGKILLed mid-round 2 right after a release of client ``a``, and ``a`` too; the
server restarts with ``--resume`` (same federation run id), ``a`` restarts with the same
``--out``: it resumes from its own latest checkpoint and its ledger's chain goes on, so
``audit`` accepts it. Then ``a`` is started on that finished directory against a new run:
refused with one line and exit 2, every byte of its directory unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmuscle_secure.client.grpc.process import STALL_ENV
from fedmuscle_secure.experiment.rundir import RunDir
from helpers.deploy_driver import (
    ORGS,
    cli,
    free_port,
    provision,
    server,
    start_federation,
    wait_all,
    wait_for,
)
from helpers.deploy_driver import rows as read_rows
from helpers.tiny import tiny_config

pytestmark = pytest.mark.slow


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _client(tmp: Path, config: Path, certs: Path, port: int, org: str, log: str, *extra):
    return cli("client", "--config", config, "--certs", certs, "--threads", "1", "--org", org,
               "--server", f"127.0.0.1:{port}", "--out", tmp / f"client-{org}",
               "--retry-initial", "0.2", "--retry-deadline", "120", *extra, log=tmp / log)


def test_a_crashed_client_resumes_its_run_and_audits_and_a_finished_run_is_refused(tmp_path):
    cfg = tiny_config(compare_local=False, **{"data.public_size": 320})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port = provision(tmp_path), free_port()
    procs = start_federation(tmp_path, config, certs, port=port, client_args=["-vv"])
    try:
        wait_for(lambda: "received PeerTerms(round 2, epoch 0, batch 0)"
                 in (tmp_path / "a.log").read_text(), 120, "a release of round 2", procs["a"])
    finally:  # after a's release of round 2 the server dies, before round 2 is recorded,
        for name in ("server", "a"):  # and a with it (a crash: it may not even notice)
            procs[name].kill()
            procs[name].wait()
    out_a = RunDir(tmp_path / "client-a")
    run_id = RunDir(tmp_path / "server").read_run_id()
    assert run_id and out_a.read_run_id() == run_id
    assert out_a.checkpoint_labels("muscle") == [1]
    procs["server"] = server(tmp_path, config, certs, port, "--resume")
    procs["a"] = _client(tmp_path, config, certs, port, "a", "a-restarted.log", "-v")
    wait_all(procs, tmp_path, timeout=240)

    server_events = _events(tmp_path / "server" / "events.jsonl")
    assert [e["run_id"] for e in server_events if e["event"] in ("run_start", "run_resume")] \
        == [run_id, run_id]
    events = _events(out_a.events)
    (resumed,) = [e for e in events if e["event"] == "client_resume"]
    assert (resumed["from_round"], resumed["run_id"]) == (1, run_id)
    rows = read_rows(tmp_path / "server" / "metrics.csv")
    assert sorted((r["round"], r["client"]) for r in rows) == sorted(
        (r, c) for r in ("1", "2", "3", "final") for c in ORGS)
    assert [r["round"] for r in read_rows(out_a.metrics)] == ["1", "2", "3", "final"]
    # one ledger, one chain: genesis once, no exchange released twice, the restart marked
    ledger = _events(out_a.root / "ledger" / "a.jsonl")
    assert [e["kind"] for e in ledger].count("genesis") == 1
    egress = [(e["body"]["round"], tuple(e["body"]["exchange"])) for e in ledger
              if e["kind"] == "egress"]
    assert len(egress) == len(set(egress)) and (2, (0, 0)) in egress
    assert any(e["kind"] == "server_lost" and "restarted" in e["body"]["reason"] for e in ledger)
    audit = subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli.main", "audit", out_a.root,
                            "--receipts", tmp_path / "server" / "receipts.jsonl",
                            "--trusted-keys", certs / "identities", "--json"],
                           check=False, capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["verdict"].startswith("audit: OK")
    # keep = 1: the server keeps its finished run's checkpoint, the client its last round's
    assert RunDir(tmp_path / "server").checkpoint_labels("muscle") == ["final"]
    assert out_a.checkpoint_labels("muscle") == [cfg.training.rounds]

    # the operator starts `a` again on the finished run's --out, against a new run
    before = _snapshot(out_a.root)
    port2 = free_port()
    other = cli("server", "--config", config, "--certs", certs, "--threads", "1", "--listen",
                f"127.0.0.1:{port2}", "--out", tmp_path / "server2", "--connect-timeout", "60",
                log=tmp_path / "server2.log")
    try:
        again = _client(tmp_path, config, certs, port2, "a", "a-again.log", "-q")  # errors only
        assert again.wait(timeout=120) == 2
    finally:
        other.kill()
        other.wait()
    err = (tmp_path / "a-again.log").read_text().strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and run_id in err[0], err
    assert _snapshot(out_a.root) == before


def test_with_keep_1_a_client_that_reported_a_round_the_server_lost_rewinds_one_round(tmp_path):
    """``checkpoint.keep`` 1. Clients ``a`` and ``b`` report round 2 (their checkpoints of
    round 2 are written) while ``c`` hangs before its report (a failpoint), so the server
    has no checkpoint of round 2 when it is SIGKILLed. Resumed, it asks for round 2 again:
    ``a`` and ``b`` must rewind to their checkpoint of round 1, which keep = 1 must not have
    deleted yet (the plan of round 3, which would have let it go, never came). ``c`` is
    killed too and restarted on its directory."""
    cfg = tiny_config(compare_local=False, checkpoint={"keep": 1})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port = provision(tmp_path), free_port()
    procs = start_federation(tmp_path, config, certs, port=port,
                             env={"c": {STALL_ENV: "PeerTerms(round 2, epoch 0, batch 2)"}})
    reported = [tmp_path / f"client-{o}" / "checkpoints" / "muscle" / "round-0002.pt"
                for o in "ab"]
    try:
        wait_for(lambda: all(p.is_file() for p in reported), 150, "a and b to report round 2",
                 procs["server"])
    finally:
        for name in ("server", "c"):
            procs[name].kill()
            procs[name].wait()
    assert RunDir(tmp_path / "server").checkpoint_labels("muscle") == [1]
    for org in "ab":
        assert RunDir(tmp_path / f"client-{org}").checkpoint_labels("muscle") == [1, 2]
    procs["server"] = server(tmp_path, config, certs, port, "--resume")
    procs["c"] = _client(tmp_path, config, certs, port, "c", "c-restarted.log")
    wait_all(procs, tmp_path, timeout=240)
    for org in "ab":
        events = _events(tmp_path / f"client-{org}" / "events.jsonl")
        assert [(e["from_round"], e["to_round"]) for e in events if e["event"] == "rewind"] \
            == [(2, 1)], org
        assert RunDir(tmp_path / f"client-{org}").checkpoint_labels("muscle") == [3]
    rows = read_rows(tmp_path / "server" / "metrics.csv")
    assert sorted((r["round"], r["client"]) for r in rows) == sorted(
        (r, c) for r in ("1", "2", "3", "final") for c in ORGS)
