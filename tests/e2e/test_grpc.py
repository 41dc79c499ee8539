"""The gRPC + mutual-TLS deployment end to end (DESIGN §6): server and clients as processes.

The deployment drives the same state machines as the simulator, so on the same config and
seeds every client's metrics must be the simulator's, exactly: the reference is
``run_experiment`` on the same config in this process, with one torch thread like every
deployed process (same reductions in the same order). Refusals run against an in-process
server, and the coordinator's handling of a dropped stream is driven without sockets.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
import yaml

from fedmuscle_secure.client.grpc.process import FAILPOINT_ENV, STALL_ENV
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.federation.server import build_server
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import RoundReport
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.provision import revocation
from fedmuscle_secure.server.grpc.process import Coordinator, start_grpc_server
from fedmuscle_secure.simulator import build_federation
from fedmuscle_secure.transport.limits import wire_limits
from fedmuscle_secure.transport.streams import TransportOptions
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2_grpc as rpc
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
from helpers.tiny import FOUR, FOUR_CLIENTS, tiny_config

pytestmark = pytest.mark.slow

COMPARED = ("test_metric", "val_metric", "task_loss", "cl_loss", "cl_steps")


def _reference(tmp: Path, cfg) -> None:
    """The simulator's run of ``cfg`` in-process with one torch thread, like every deployed
    process (the same reductions in the same order)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_experiment(cfg, tmp / "reference", progress=False)
    finally:
        torch.set_num_threads(threads)


def _deploy(tmp: Path, cfg) -> dict:
    """Server + one process per client on ``cfg``, and the simulator's run of it."""
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = provision(tmp)
    procs = start_federation(tmp, config, certs, port=free_port(), client_args=["--json"])
    try:
        _reference(tmp, cfg)
    finally:
        wait_all(procs, tmp, timeout=120)
    return {"tmp": tmp, "cfg": cfg, "certs": certs}


def _check_matches_simulator(run: dict, compared: tuple[str, ...] = COMPARED) -> None:
    tmp, cfg, certs = run["tmp"], run["cfg"], run["certs"]
    rows = read_rows(tmp / "server" / "metrics.csv")
    rounds = [str(r) for r in range(1, cfg.training.rounds + 1)] + ["final"]
    got = {(r["round"], r["client"]): r for r in rows}
    assert sorted(got) == sorted((r, c) for r in rounds for c in ORGS)
    ref = {(r["round"], r["client"]): r for r in read_rows(tmp / "reference" / "metrics.csv")
           if r["method"] == cfg.muscle.method}
    assert sorted(ref) == sorted(got)
    for key, row in ref.items():  # exact: same code, seeds and thread count
        for col in compared:
            assert got[key][col] == row[col], f"{key} {col}: gRPC {got[key][col]} vs sim {row[col]}"
        assert float(got[key]["bytes_sent"]) > 0 or key[0] == "final"
    for org in ORGS:  # each client printed its final metrics; they are the server's rows
        printed = [x for x in (tmp / f"{org}.log").read_text().splitlines() if x.startswith("{")]
        final = json.loads(printed[-1])
        assert f"{final['test_metric']:.6g}" == ref[("final", org)]["test_metric"]
        assert (tmp / f"client-{org}" / "ledger" / f"{org}.jsonl").is_file()
        _audit_ok(tmp, org, certs)  # signed by the provisioned identity, every egress received
    events = [json.loads(line)["event"]
              for line in (tmp / "server" / "events.jsonl").read_text().splitlines()]
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("round_end") == cfg.training.rounds
    assert (tmp / "server" / "summary.md").is_file()


def test_plain_deployment_matches_the_simulator(tmp_path):
    cfg = tiny_config(compare_local=False)
    _check_matches_simulator(_deploy(tmp_path, cfg))
    _check_final_models(tmp_path, cfg)
    _check_operator_lines(tmp_path, cfg)


def _check_operator_lines(tmp: Path, cfg, orgs=ORGS, guarantees: tuple[str, ...] = ()) -> None:
    """What the operators saw (the logs are files: plain lines, no bar, no carriage return):
    the server's start, one line per round with r/R, members, bytes and, under DP, the ε
    each member reported, and its end; each organisation's line per round with its own
    metrics and ε (default verbosity) and a ``round_end`` event per round with metrics, ε
    and timing."""
    rounds = cfg.training.rounds
    log = (tmp / "server.log").read_text()
    assert "\r" not in log and "listening on 127.0.0.1:" in log and "run finished" in log
    lines = re.findall(rf"INFO (round (\d+)/{rounds} complete  members .*)", log)
    assert [int(r) for _, r in lines] == list(range(1, rounds + 1)), log
    for line, _ in lines:
        assert " MB sent " in line and "ETA " in line
        if guarantees:
            assert f"ε reported by members ({'/'.join(guarantees)}): " in line, line
    for org in orgs:
        own = (tmp / f"{org}.log").read_text()
        assert "\r" not in own
        lines = re.findall(rf"INFO {org}: (round (\d+)/{rounds} complete  test_metric .*)", own)
        assert [int(r) for _, r in lines] == list(range(1, rounds + 1)), own
        assert re.search(rf"INFO {org}: final  test_metric ", own)
        for line, _ in lines:
            assert " MB received " in line and "ETA " in line
            if guarantees:  # its own ε, every guarantee that is on
                own_eps = "ε " + ", ".join(rf"{g} \d+\.\d\d" for g in guarantees)
                assert re.search(own_eps + r" \(own accountant\)", line), line
        ends = [e for e in _events(tmp / f"client-{org}" / "events.jsonl")
                if e["event"] == "round_end"]
        assert [e["round"] for e in ends] == [*range(1, rounds + 1), "final"]
        for e in ends:
            assert e["rounds"] == rounds and e["seconds"] > 0 and "test_metric" in e["metrics"]
            assert e["bytes_received"] > 0 or e["round"] == "final"
            for g in guarantees:
                assert e["metrics"][f"eps_{g}"] > 0


def _check_final_models(tmp: Path, cfg) -> None:
    """Each organisation kept its closing model (model/final.pt + final.json): loaded with
    models.load_final, it scores on the test split what the organisation reported."""
    from fedmuscle_secure.client.local_update import evaluate
    from fedmuscle_secure.data import get_task
    from fedmuscle_secure.models import load_final

    split = make_split(cfg)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as the deployed processes evaluated
        for org in ORGS:
            kept = load_final(tmp / f"client-{org}" / "model" / "final.pt")
            task = get_task(kept.spec["task"], split.num_classes)
            score = evaluate(kept.model, task, torch.from_numpy(split.test_x),
                             task.targets(split.test_y))
            assert score == kept.spec["metrics"]["test_metric"], org
            own = read_rows(tmp / f"client-{org}" / "metrics.csv")
            assert own[-1]["round"] == "final"
    finally:
        torch.set_num_threads(threads)


def _audit_ok(tmp: Path, org: str, certs: Path, *, run_dir: bool = False) -> dict:
    """``audit`` of the org's ledger (or, ``run_dir``, its whole run directory) against the
    server's receipt log and the provisioned identities, as its officer runs it; the report.
    The org's run directory holds its identity's public half only, never the private key."""
    target = tmp / f"client-{org}"
    out = subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli.main", "audit",
                          target if run_dir else target / "ledger" / f"{org}.jsonl",
                          "--receipts", tmp / "server" / "receipts.jsonl",
                          "--trusted-keys", certs / "identities", "--json"],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["trust"] == "trusted" and report["verdict"].startswith("audit: OK"), report
    assert sorted(p.name for p in (target / "keys").iterdir()) == [f"{org}.pub"]
    assert (target / "keys" / f"{org}.pub").read_bytes() == \
        (certs / "identities" / f"{org}.pub").read_bytes()
    genesis = json.loads((target / "ledger" / f"{org}.jsonl").read_text().splitlines()[0])
    assert genesis["kind"] == "genesis" and genesis["body"]["scope"] == "organisation"
    return report


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_secagg_dp_client_killed_mid_round_recovers_and_audits(tmp_path):
    """Four client processes, secagg with client-level (distributed) noise and DP-SGD, one
    exchange per batch. Client ``d`` SIGKILLs itself (a failpoint: an outside kill cannot
    land at a reliable point) mid-round 2, mid-exchange, on receiving its peers' encrypted
    shares, before sending its masked input: that exchange completes by dropout recovery, the
    run goes on without ``d``, and every survivor's ledger audits against the server's
    receipt log."""
    cfg = tiny_config(clients=FOUR_CLIENTS, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch", "training.rounds": 3,
        "privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 1.0},
                    "dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = provision(tmp_path, orgs=FOUR)
    point = "SecAggEnvelope(round 2, epoch 0, batch 0, ShareInbox"
    procs = start_federation(tmp_path, config, certs, FOUR, port=free_port(),
                             env={"d": {FAILPOINT_ENV: point}})
    assert procs.pop("d").wait(timeout=150) == -signal.SIGKILL
    wait_all(procs, tmp_path, timeout=150)
    events = _events(tmp_path / "server" / "events.jsonl")
    left = [e for e in events if e["event"] == "client_left"]
    assert [(e["client"], e["round"]) for e in left] == [("d", 2)]
    assert left[0]["reason"].startswith("transport: ")
    dropouts = [e for e in events if e["event"] == "secagg_dropouts"]
    # d had advertised its keys and sent its encrypted shares: its pairwise masks are
    # recovered from the survivors' shares of its mask key
    assert [(e["round"], e["batch"], e["dropped"]) for e in dropouts] == [
        (2, 0, {"d": "masked_input"})], dropouts
    assert not [e for e in events if e["event"] == "secagg_aborted"]
    server_rows = read_rows(tmp_path / "server" / "metrics.csv")
    got = {(r["round"], r["client"]) for r in server_rows}
    assert got == {("1", c) for c in FOUR} | {(r, c) for r in ("2", "3", "final") for c in "abc"} \
        | {("final", "d")}  # d keeps its row, with when and why it left
    (d_final,) = [r for r in server_rows if (r["round"], r["client"]) == ("final", "d")]
    assert d_final["left_round"] == "2" and d_final["left_reason"] == left[0]["reason"]
    assert "stream closed by the client" in d_final["left_reason"]  # was "stream failed: "
    # under DP the server has no metric computed on private data or from the model (§4.4) ...
    assert all(r[k] == "not reported" for r in server_rows
               for k in ("val_metric", "task_loss", "test_metric"))
    assert all(float(r["eps_client"]) > 0 for r in server_rows)
    for org in "abc":  # ... each organisation has its own, in its own run directory
        own = read_rows(tmp_path / f"client-{org}" / "metrics.csv")
        assert [r["round"] for r in own] == ["1", "2", "3", "final"]
        assert all(0 <= float(r["val_metric"]) <= 1 for r in own)
    for org in "abc":  # survivors: chains, signatures, ε recomputed, every egress received
        _audit_ok(tmp_path, org, certs)
    _check_operator_lines(tmp_path, cfg, orgs="abc", guarantees=("record", "client"))
    assert "round 2/3 complete  members 3/4 (left: d)" in (tmp_path / "server.log").read_text()


def test_three_org_secagg_losing_one_stops_with_a_clear_error(tmp_path):
    """Three organisations under secagg; ``c`` SIGKILLs itself mid-exchange (after sending its
    encrypted shares, before its masked input). The two survivors must not complete that
    sum (each would learn the other's input by subtracting its own), and no later exchange
    can run: the server stops with a clear error and exit 1, and tells the clients why, so
    they exit non-zero at once instead of retrying."""
    cfg = tiny_config(protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch", "training.rounds": 3})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = provision(tmp_path)
    point = "SecAggEnvelope(round 2, epoch 0, batch 0, ShareInbox"
    procs = start_federation(tmp_path, config, certs, port=free_port(),
                             env={"c": {FAILPOINT_ENV: point}})
    assert procs.pop("c").wait(timeout=150) == -signal.SIGKILL
    codes = {n: p.wait(timeout=150) for n, p in procs.items()}
    assert codes == {"server": 1, "a": 1, "b": 1}, codes
    server_log = (tmp_path / "server.log").read_text()
    assert "only 2 clients are left" in server_log and "Traceback" not in server_log
    for org in "ab":
        assert "only 2 clients are left" in (tmp_path / f"{org}.log").read_text()
    events = _events(tmp_path / "server" / "events.jsonl")
    aborted = [e for e in events if e["event"] == "secagg_aborted"]
    assert aborted and all(e["round"] == 2 for e in aborted)
    assert not [e for e in events if e["event"] == "secagg_dropouts"]  # no sum over a and b
    assert events[-1]["event"] == "run_stopped"


def test_a_member_stalling_mid_secure_sum_does_not_hold_the_round_to_its_timeout(tmp_path):
    """Four client processes, secagg, one exchange per batch, the default hour-long round
    timeout. Client ``d`` stops answering (a failpoint: it keeps its connection open and
    never answers again) on receiving its peers' encrypted shares in round 1. The exchange
    closes at the 30 s stage deadline without d (its masks are recovered from the others'
    shares), d sits out the round's other exchanges, and when it has not reported 30 s
    after the others it is let go: the run finishes with a, b, c long before the round
    timeout (this test gives it 400 s; without stage deadlines it waits the full hour)."""
    cfg = tiny_config(clients=FOUR_CLIENTS, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch", "training.rounds": 2})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = provision(tmp_path, orgs=FOUR)
    point = "SecAggEnvelope(round 1, epoch 0, batch 0, ShareInbox"
    procs = start_federation(tmp_path, config, certs, FOUR, port=free_port(),
                             server_args=["--round-timeout", "3600", "--stage-timeout", "30"],
                             env={"d": {STALL_ENV: point}})
    stalled = procs.pop("d")
    try:
        wait_all(procs, tmp_path, timeout=400)
        assert stalled.poll() is None  # still connected, still silent
    finally:
        stalled.kill()
        stalled.wait()
    assert "not answering" in (tmp_path / "d.log").read_text()
    events = _events(tmp_path / "server" / "events.jsonl")
    deadlines = [(e["round"], e["stage"], e["silent"]) for e in events
                 if e["event"] == "stage_deadline"]
    assert deadlines == [(1, "secagg/1/0/0/masked_input", ["d"]), (1, "report/1", ["d"])]
    dropouts = [(e["round"], e["batch"], e["dropped"]) for e in events
                if e["event"] == "secagg_dropouts"]
    assert dropouts == [(1, 0, {"d": "masked_input"})]
    left = [e for e in events if e["event"] == "client_left"]
    assert [(e["client"], e["round"]) for e in left] == [("d", 1)]
    assert "missed the report deadline" in left[0]["reason"]
    server_rows = read_rows(tmp_path / "server" / "metrics.csv")
    got = {(r["round"], r["client"]) for r in server_rows}
    assert got == {(r, c) for r in ("1", "2", "final") for c in "abc"} | {("final", "d")}
    (d_final,) = [r for r in server_rows if (r["round"], r["client"]) == ("final", "d")]
    assert d_final["left_round"] == "1" and "missed the report deadline" in d_final["left_reason"]
    assert "stage report: deadline passed, silent: ['d']" in (tmp_path / "server.log").read_text()


def test_server_killed_and_restarted_resumes_without_a_second_release(tmp_path):
    """SIGKILL the server process mid-round 2 (client ``a`` has just taken a contrastive step
    of round 2, so every client released (round 2, epoch 0, batch 0); the server's last
    checkpoint is round 1); start it again with --resume on the same port. The clients,
    retrying, reconnect and rewind to their own round-1 checkpoints and round 2 runs again,
    but no client releases twice for an exchange: each sits out the ones its ledger shows
    as released (a second sum over a smaller group would reveal the missing member). Round 1
    is the uninterrupted simulator's, exactly; the run finishes."""
    cfg = tiny_config(compare_local=False, **{"data.public_size": 320})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port = provision(tmp_path), free_port()
    procs = start_federation(tmp_path, config, certs, port=port, client_args=["--json", "-vv"])
    try:
        wait_for(lambda: "received PeerTerms(round 2, epoch 0, batch 0)"
                 in (tmp_path / "a.log").read_text(), 120, "a step of round 2", procs["server"])
    finally:
        procs["server"].kill()
        procs["server"].wait()
    checkpoints = tmp_path / "server" / "checkpoints" / "muscle"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["round-0001.pt"]
    procs["server"] = server(tmp_path, config, certs, port, "--resume")
    try:
        _reference(tmp_path, cfg)
    finally:
        wait_all(procs, tmp_path, timeout=150)
    rows = read_rows(tmp_path / "server" / "metrics.csv")
    rounds = [str(r) for r in range(1, cfg.training.rounds + 1)] + ["final"]
    assert sorted((r["round"], r["client"]) for r in rows) == sorted(
        (r, c) for r in rounds for c in ORGS)
    ref = {(r["round"], r["client"]): r for r in read_rows(tmp_path / "reference" / "metrics.csv")
           if r["method"] == cfg.muscle.method and r["round"] == "1"}
    got = {(r["round"], r["client"]): r for r in rows if r["round"] == "1"}
    for key, row in ref.items():
        for col in COMPARED:
            assert got[key][col] == row[col], f"{key} {col}: gRPC {got[key][col]} vs sim {row[col]}"
    server_events = _events(tmp_path / "server" / "events.jsonl")
    assert [e["event"] for e in server_events].count("run_resume") == 1
    sat = [e for e in server_events if e["event"] == "exchange_sat_out"]
    assert sat and sat[0]["round"] == 2 and (sat[0]["epoch"], sat[0]["batch"]) == (0, 0)
    assert set(sat[0]["clients"]) == set(ORGS)  # a's step of (2, 0, 0): everyone had released
    receipts = [json.loads(x) for x in (tmp_path / "server" / "receipts.jsonl").read_text().splitlines()]
    for org in ORGS:
        events = _events(tmp_path / f"client-{org}" / "events.jsonl")
        assert [e["event"] for e in events].count("server_lost") == 1
        rewinds = [(e["from_round"], e["to_round"]) for e in events if e["event"] == "rewind"]
        assert rewinds in ([(1, 1)], [(2, 1)]) if org == "a" else rewinds in ([], [(1, 1)], [(2, 1)])
        ledger = [json.loads(x) for x in
                  (tmp_path / f"client-{org}" / "ledger" / f"{org}.jsonl").read_text().splitlines()]
        egress = [(e["body"]["round"], tuple(e["body"]["exchange"])) for e in ledger
                  if e["kind"] == "egress"]
        assert len(egress) == len(set(egress)), f"{org} released twice for an exchange"
        assert (2, (0, 0)) in [(e["body"]["round"], tuple(e["body"]["exchange"])) for e in ledger
                               if e["kind"] == "sit_out"]
        mine = [(r["body"]["round"], tuple(r["body"]["exchange"])) for r in receipts
                if r["client"] == org and r["kind"] == "receipt"]
        assert len(mine) == len(set(mine)), f"the server received two releases of {org}"
        # the releases the dead server may not have received are marked in the signed ledger;
        # audit (the org's run directory, as deployed: its own ledger only) reports those
        # without a receipt as unacknowledged, not as tampering
        ledger = _events(tmp_path / f"client-{org}" / "ledger" / f"{org}.jsonl")
        (lost,) = [e for e in ledger if e["kind"] == "server_lost"]
        span = lost["body"]["unacknowledged_seqs"]
        assert lost["body"]["round"] == 2
        if org == "a":  # it had released round 2's first batch before the kill
            assert span is not None and span[0] <= span[1] < lost["seq"]
        report = _audit_ok(tmp_path, org, certs, run_dir=True)
        unacknowledged = [n for n in report["notes"] if "unacknowledged release" in n]
        marked = range(span[0], span[1] + 1) if span else range(0)
        assert all(int(n.split("seq ")[1].split(":")[0]) in marked for n in unacknowledged)


def test_resume_refuses_another_config_or_an_empty_directory(tmp_path):
    from fedmuscle_secure.errors import ConfigError
    from fedmuscle_secure.server.grpc.process import serve

    certs = provision(tmp_path)
    with pytest.raises(ConfigError, match="nothing to resume"):
        serve(tiny_config(), certs, "127.0.0.1:0", tmp_path / "none", resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.resolved.yaml").write_text("name: other\n")
    with pytest.raises(ConfigError) as exc:
        serve(tiny_config(), certs, "127.0.0.1:0", tmp_path / "run", resume=True)
    assert exc.value.field == "--config"


def test_baselines_are_refused_by_both_processes(tmp_path):
    from fedmuscle_secure.client.grpc.process import run_client
    from fedmuscle_secure.errors import ConfigError
    from fedmuscle_secure.server.grpc.process import serve

    cfg = tiny_config(**{"muscle.method": "simclr"})
    for start in (lambda: serve(cfg, tmp_path, "127.0.0.1:0", tmp_path / "s"),
                  lambda: run_client(cfg, "a", tmp_path, "127.0.0.1:1", tmp_path / "c")):
        with pytest.raises(ConfigError) as exc:
            start()
        assert exc.value.field == "muscle.method" and "simulator only" in str(exc.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_ckks_deployment_matches_the_simulator(tmp_path):
    """The key holder provisions the CKKS context; the server gets only public.ctx (a
    server directory holding secret.ctx is refused) and the clients the secret context."""
    from fedmuscle_secure.errors import ConfigError
    from fedmuscle_secure.federation.ckks import server_ckks
    from fedmuscle_secure.provision.keys import provision_ckks

    cfg = tiny_config(**{"protection": "ckks", "muscle.method": "muscle_sum",
                         "muscle.exchange": "per_epoch", "training.rounds": 1,
                         "compare_local": False})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = provision(tmp_path)
    provision_ckks(cfg, certs)
    with pytest.raises(ConfigError, match="never reach the server"):
        server_ckks(cfg, certs, None)
    server_certs = tmp_path / "server-certs"  # what the server operator holds
    shutil.copytree(certs, server_certs, ignore=shutil.ignore_patterns("secret.ctx", "*.key"))
    shutil.copy(certs / "server" / "server.key", server_certs / "server" / "server.key")
    port = free_port()
    procs = {"server": server(tmp_path, config, server_certs, port)}
    for org in ORGS:
        procs[org] = cli("client", "--config", config, "--certs", certs, "--threads", "1",
                         "--org", org, "--server", f"127.0.0.1:{port}", "--out",
                         tmp_path / f"client-{org}", "--retry-initial", "0.2", "--json",
                         log=tmp_path / f"{org}.log")
    try:
        _reference(tmp_path, cfg)  # its own context: ciphertext noise differs, so compare
    finally:                       # the parts CKKS does not touch and the rest within noise
        wait_all(procs, tmp_path, timeout=150)
    rows = {(r["round"], r["client"]): r for r in read_rows(tmp_path / "server" / "metrics.csv")}
    ref = {(r["round"], r["client"]): r for r in read_rows(tmp_path / "reference" / "metrics.csv")}
    assert sorted(rows) == sorted(ref)
    for key, row in ref.items():
        assert rows[key]["val_metric"] == row["val_metric"] or key[0] == "final"
        if key[0] != "final":
            assert float(rows[key]["bytes_sent"]) > 100_000  # ciphertexts, not float32 rows
            assert abs(float(rows[key]["cl_loss"]) - float(row["cl_loss"])) < 1e-3
    for org in ORGS:
        _audit_ok(tmp_path, org, certs)


def test_secagg_deployment_matches_the_simulator(tmp_path):
    cfg = tiny_config(**{"protection": "secagg", "muscle.method": "muscle_sum",
                         "muscle.exchange": "per_epoch", "training.rounds": 1,
                         "compare_local": False})
    _check_matches_simulator(_deploy(tmp_path, cfg), (*COMPARED, "secagg_aborted"))


# --- who may connect (in-process server: refusals need no training) -------------------------


@pytest.fixture
def live_server(tmp_path):
    """The gRPC server of the tiny config, with org ``c`` revoked and an org ``d`` that has a
    valid certificate of our CA but is not a client of the config."""
    certs = provision(tmp_path, orgs=(*ORGS, "d"))
    revocation.revoke(certs, "c")
    cfg = tiny_config(compare_local=False)
    setup = federation_setup(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(build_server(cfg, "muscle", setup), final_round=4)
    server, port = start_grpc_server(coordinator, pki.load_trust(certs), certs, "127.0.0.1:0",
                                     TransportOptions(), wire_limits(cfg))
    yield certs, coordinator, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _channel(target: str, ca: Path, org_dir: Path, org: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), (org_dir / f"{org}.key").read_bytes(),
                                         (org_dir / f"{org}.crt").read_bytes())
    return grpc.secure_channel(target, creds)


def _exchange(channel: grpc.Channel) -> grpc.RpcError | None:
    """Open the stream, send nothing, read to the end; the error the server ended it with."""
    with channel:
        try:
            for _ in rpc.FedMuscleStub(channel).Stream(iter(()), timeout=20):
                pass
        except grpc.RpcError as exc:
            return exc
    return None


def test_a_provisioned_client_is_admitted(live_server):
    certs, coordinator, target = live_server
    assert _exchange(_channel(target, certs / "ca" / "ca.crt", certs / "orgs" / "a", "a")) is None
    assert coordinator.gone == {"a": "stream closed by the client"}


@pytest.mark.parametrize(("org", "reason"), [
    ("c", "revoked"), ("d", "not in this federation's config")])
def test_revoked_or_unknown_client_is_refused_with_the_reason_logged(live_server, org, reason,
                                                                      caplog):
    certs, coordinator, target = live_server
    with caplog.at_level(logging.WARNING, logger="fedmuscle_secure.server"):
        err = _exchange(_channel(target, certs / "ca" / "ca.crt", certs / "orgs" / org, org))
    assert err is not None and err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason in err.details()
    assert any("refused" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert not coordinator.outboxes and not coordinator.gone


def test_foreign_ca_and_plaintext_connections_are_refused(live_server, tmp_path):
    certs, coordinator, target = live_server
    foreign = provision(tmp_path, name="other")  # same org name "a", another CA
    err = _exchange(_channel(target, certs / "ca" / "ca.crt", foreign / "orgs" / "a", "a"))
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE  # TLS handshake fails
    err = _exchange(grpc.insecure_channel(target))
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE
    assert not coordinator.outboxes and not coordinator.gone


def test_a_stream_closing_mid_round_is_a_leave_and_the_others_finish():
    """The coordinator's side of a dropped stream, without sockets: the server drops the
    client (a Leave), the round completes with the others, Finish reaches only them."""
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    fed = build_federation(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(fed.server, final_round=2)
    boxes = {c: coordinator.connect(c) for c in ORGS}
    with pytest.raises(ProtocolError, match="names client 'b'"):
        coordinator.submit("a", RoundReport("b", 1, {}))  # a stream speaks only for its client
    coordinator.start_round(1)
    coordinator.disconnect("c", "killed")

    def pump() -> None:
        while any(not boxes[c].empty() for c in ("a", "b")):
            for c in ("a", "b"):
                while not boxes[c].empty():
                    for reply in fed.clients[c].handle(boxes[c].get_nowait()):
                        coordinator.submit(c, reply)

    pump()
    assert fed.server.round_complete and fed.server.active == ["a", "b"]
    assert fed.server.departures == [{"client": "c", "round": 1, "reason": "transport: killed"}]
    assert sorted(fed.server.reports) == ["a", "b"]
    assert coordinator.finish() == ["a", "b"]
    pump()
    assert sorted(coordinator.finals) == ["a", "b"]
    assert all(m["test_metric"] >= 0 for m in coordinator.finals.values())
    fed.close()


def test_an_expired_certificate_of_our_ca_is_refused(live_server, tmp_path):
    """Organisation ``a``'s key, certified by our CA but expired yesterday, is refused."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import serialization

    certs, coordinator, target = live_server
    ca = pki.load_authority(certs)
    key = serialization.load_pem_private_key((certs / "orgs" / "a" / "a.key").read_bytes(), None)
    now = datetime.now(UTC)
    cert = pki.issue_certificate(ca, key.public_key(), common_name="a", usage=pki.Usage.CLIENT,
                                 not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    org = tmp_path / "expired"
    org.mkdir()
    (org / "a.key").write_bytes((certs / "orgs" / "a" / "a.key").read_bytes())
    (org / "a.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    err = _exchange(_channel(target, certs / "ca" / "ca.crt", org, "a"))
    # BoringSSL checks validity against the CA during the handshake (the reason, "certificate
    # has expired", is in gRPC's own log); Trust.verify_peer would refuse it next
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert not coordinator.outboxes and not coordinator.gone
