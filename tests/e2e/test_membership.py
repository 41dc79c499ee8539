"""Membership changes of a deployed federation, with real processes on 127.0.0.1 (DESIGN §6).

The adversary of the first test is an organisation the CA revokes mid-run: it keeps its
open stream and goes on releasing (the server used to read its CRL once, at the start, and
received three more releases from it). Then the operator's side of the same run: the
server crashes, and a restart that would exclude a second organisation (leaving a secure
sum of two, in which each member learns the other's input) must refuse to run; a plain
restart finishes with the three members left, each keeping its final model, and every
remaining organisation's ledger audits against the server's receipts and the provisioned
identities. The other two tests are the quorum of ``deployment.min_clients``: below it the
server gives up and the connected clients exit at once, told which organisations were
missing; at it, the run goes on without the absent one and keeps its row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from fedmuscle_secure.provision import revocation
from helpers.deploy_driver import (
    cli,
    free_port,
    provision,
    rows,
    server,
    start_federation,
    wait_all,
    wait_for,
)
from helpers.tiny import FOUR, FOUR_CLIENTS, tiny_config

pytestmark = pytest.mark.slow

def _events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _rounds_in_metrics(run: Path) -> set[str]:
    """Rounds with rows in the server's metrics.csv (written after the round's checkpoint)."""
    return {r["round"] for r in rows(run / "metrics.csv")} if (run / "metrics.csv").is_file() \
        else set()


def _audit(tmp: Path, org: str, certs: Path) -> dict:
    """The organisation's officer audits its run directory against the server's receipt log
    and the provisioned identities."""
    out = subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli.main", "audit",
                          tmp / f"client-{org}", "--receipts", tmp / "server" / "receipts.jsonl",
                          "--trusted-keys", certs / "identities", "--json"],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["trust"] == "trusted" and report["verdict"].startswith("audit: OK"), report
    return report


def test_a_revoked_member_is_cut_off_and_no_restart_runs_a_secure_sum_of_two(tmp_path):
    cfg = tiny_config(clients=FOUR_CLIENTS, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_epoch", "training.rounds": 3,
        "privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 1.0},
                    "dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port, run = provision(tmp_path, orgs=FOUR), free_port(), tmp_path / "server"
    procs = start_federation(tmp_path, config, certs, FOUR, port=port)
    try:
        wait_for(lambda: "1" in _rounds_in_metrics(run), 200, "round 1", procs["server"])
        # the CA revokes d (the server reads this CA directory's crl.pem)
        revocation.revoke(certs, "d", reason=x509.ReasonFlags.key_compromise)
        assert procs.pop("d").wait(timeout=200) == 1  # told why: it stops, no retrying
        wait_for(lambda: "2" in _rounds_in_metrics(run), 200, "round 2", procs["server"])
    finally:
        procs["server"].kill()  # the server crashes in round 3
        procs["server"].wait()
    d_log = (tmp_path / "d.log").read_text()
    assert "'d' was dropped from the run in round 2" in d_log and "keyCompromise" in d_log
    assert "reconnecting" not in d_log

    # restart without c: a and b would be left, a secure sum of two
    excluding = cli("server", "--config", config, "--certs", certs, "--threads", "1", "--listen",
                    f"127.0.0.1:{port}", "--out", run, "--resume", "--exclude", "c",
                    log=tmp_path / "server-exclude.log")
    try:
        assert excluding.wait(timeout=120) == 1
    finally:
        if excluding.poll() is None:
            excluding.kill()
    said = (tmp_path / "server-exclude.log").read_text()
    assert "Traceback" not in said, said
    assert said.strip().splitlines()[-1] == (
        "fedmuscle-secure: error: --exclude c: 2 organisation(s) would remain in the run "
        "(['a', 'b']) but protection 'secagg' needs at least max(3, t) = 3 (a secure sum over "
        "fewer would show each member the others' inputs); nothing was run"), said

    procs["server"] = server(tmp_path, config, certs, port, "--resume")  # the clients retry
    wait_all(procs, tmp_path, timeout=300)

    events = _events(run / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("run_start") == 1 and kinds.count("run_resume") == 1  # none refused
    assert [e["excluded"] for e in events if e["event"] == "run_resume"] == [[]]
    revoked = [e for e in events if e["event"] == "client_revoked"]
    assert [(e["client"], e["round"]) for e in revoked] == [("d", 2)]
    assert "keyCompromise" in revoked[0]["reason"]
    left = [e for e in events if e["event"] == "client_left"]
    assert [(e["client"], e["round"]) for e in left] == [("d", 2)]
    assert "certificate revoked" in left[0]["reason"]
    assert any(e["event"] == "crl_reloaded" and e["revoked"] == 1 for e in events)

    receipts = [json.loads(x) for x in (run / "receipts.jsonl").read_text().splitlines()]
    per_round: dict[tuple[str, int], int] = {}
    for r in receipts:
        if r["kind"] == "receipt":
            key = (r["client"], r["body"]["round"])
            per_round[key] = per_round.get(key, 0) + 1
    assert per_round.get(("d", 1), 0) > 0  # it released in round 1 ...
    assert [k for k in per_round if k[0] == "d" and k[1] >= 2] == []  # ... never after
    for org in "abc":
        assert all(per_round.get((org, r), 0) > 0 for r in (1, 2, 3))

    final = {r["client"]: r for r in rows(run / "metrics.csv") if r["round"] == "final"}
    assert sorted(final) == list(FOUR)  # d keeps its row, with when and why it left
    assert final["d"]["left_round"] == "2" and "certificate revoked" in final["d"]["left_reason"]
    assert float(final["d"]["eps_client"]) > 0 and final["a"]["left_round"] == ""
    summary = (run / "summary.md").read_text()
    assert "| muscle_sum | d | 2 | transport: certificate revoked" in summary
    assert "round 2: transport: certificate revoked" in summary  # the privacy table
    for org in "abc":
        assert (tmp_path / f"client-{org}" / "model" / "final.pt").is_file()
        _audit(tmp_path, org, certs)


def _clients_first(tmp: Path, cfg, orgs) -> dict:
    """Start the clients of ``orgs`` (retrying every second), wait until each is dialling the
    server, then start the server with an 8 s connect timeout."""
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port = provision(tmp), free_port()
    procs = {org: cli("client", "--config", config, "--certs", certs, "--threads", "1",
                      "--org", org, "--server", f"127.0.0.1:{port}", "--out",
                      tmp / f"client-{org}", "--retry-initial", "0.2", "--retry-max", "1",
                      "--retry-deadline", "120", log=tmp / f"{org}.log") for org in orgs}
    for org in orgs:
        # a client writes nothing before first contact (the run id): wait for it to dial
        wait_for(lambda org=org: "connecting to" in (tmp / f"{org}.log").read_text(),
                 120, f"{org} to start connecting", procs[org])
    procs["server"] = server(tmp, config, certs, port, "--connect-timeout", "8")
    return procs


def test_below_the_quorum_the_connected_clients_are_told_who_is_missing_and_exit(tmp_path):
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    procs = _clients_first(tmp_path, cfg, ("a", "b"))
    assert procs["server"].wait(timeout=120) == 1
    gave_up = time.monotonic()
    codes = {org: procs[org].wait(timeout=60) for org in "ab"}
    assert codes == {"a": 1, "b": 1} and time.monotonic() - gave_up < 30
    said = [x for x in (tmp_path / "server.log").read_text().splitlines()
            if x.startswith("fedmuscle-secure: error:")]
    assert len(said) == 1 and "gave up after 8 s waiting for ['c'] to connect" in said[0]
    for org in "ab":
        text = (tmp_path / f"{org}.log").read_text()
        last = text.strip().splitlines()[-1]
        assert last.startswith("fedmuscle-secure: error: the server stopped the run: gave up "
                               "after 8 s waiting for ['c'] to connect"), text
        assert "'a'" not in last and "'b'" not in last and "reconnecting" not in text
    assert _events(tmp_path / "server" / "events.jsonl")[-1]["event"] == "run_stopped"


def test_at_the_quorum_the_run_goes_on_without_the_absent_member(tmp_path):
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1,
                                              "deployment": {"min_clients": 2}})
    procs = _clients_first(tmp_path, cfg, ("a", "b"))
    wait_all(procs, tmp_path, timeout=200)
    run = tmp_path / "server"
    absent = [e for e in _events(run / "events.jsonl") if e["event"] == "clients_absent"]
    assert [(e["clients"], e["round"]) for e in absent] == [(["c"], 1)]
    final = {r["client"]: r for r in rows(run / "metrics.csv") if r["round"] == "final"}
    assert sorted(final) == ["a", "b", "c"] and final["c"]["left_round"] == "1"
    assert final["c"]["left_reason"].startswith("absent: not connected within the connect")
    assert final["a"]["test_metric"] not in ("", None)
    assert "| muscle | c | 1 | absent: not connected" in (run / "summary.md").read_text()
    for org in "ab":
        assert (tmp_path / f"client-{org}" / "model" / "final.pt").is_file()
