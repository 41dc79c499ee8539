"""The gRPC + mutual-TLS deployment end to end (DESIGN §6): server and clients as processes.

The deployment drives the same state machines as the simulator, so on the same config and
seeds every client's metrics must be the simulator's, exactly: the reference is
``run_experiment`` on the same config in this process, with one torch thread like every
deployed process (same reductions in the same order). Refusals run against an in-process
server, and the coordinator's handling of a dropped stream is driven without sockets.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from fedmuscle_secure.server.grpc_server import Coordinator, start_grpc_server
from tiny import tiny_config

from fedmuscle_secure import provision as pki
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.experiment import make_split, run_experiment
from fedmuscle_secure.grpc_transport import TransportOptions
from fedmuscle_secure.identity import generate_identity, save_identity
from fedmuscle_secure.messages import RoundReport
from fedmuscle_secure.simulator import build_federation, build_server, federation_setup
from fedmuscle_secure.wire_pb import fedmuscle_pb2_grpc as rpc

pytestmark = pytest.mark.slow

ORGS = ("a", "b", "c")
COMPARED = ("test_metric", "val_metric", "task_loss", "cl_loss", "cl_steps")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _provision(root: Path, orgs=ORGS, name: str = "grpc-test") -> Path:
    project = pki.parse_project({
        "name": name, "server": {"name": "fl-server", "hosts": ["localhost", "127.0.0.1"]},
        "organizations": [{"name": o, "client_id": o} for o in orgs]})
    return pki.init_ca_dir(project, root / f"pki-{name}")


def _cli(*args: str | Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "fedmuscle_secure.cli", *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait(procs: dict[str, subprocess.Popen], logs: Path, timeout: float) -> None:
    """Every process exits 0 within ``timeout`` seconds; else all are killed and the test
    fails with their logs."""
    t_end = time.monotonic() + timeout
    codes: dict[str, int | str] = {}
    try:
        for name, p in procs.items():
            try:
                codes[name] = p.wait(timeout=max(1.0, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = "timeout"
                break
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = {n: c for n, c in codes.items() if c != 0}
    assert not bad and len(codes) == len(procs), f"exit codes {codes}; logs:\n" + "\n".join(
        f"--- {n}\n{(logs / f'{n}.log').read_text()[-3000:]}" for n in procs)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _deploy(tmp: Path, cfg) -> dict:
    """Server + one process per client on ``cfg``, and the simulator's run of it in-process
    (one torch thread everywhere: the same reductions in the same order)."""
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs = _provision(tmp)
    if cfg.protection == "secagg":  # each org's Ed25519 identity; peers get the .pub
        for org in ORGS:
            save_identity(generate_identity(), certs / "identities", org)
    port = _free_port()
    common = ["--config", config, "--certs", certs, "--threads", "1"]
    procs = {"server": _cli("server", *common, "--listen", f"127.0.0.1:{port}", "--out",
                            tmp / "server", "--connect-timeout", "80", "--round-timeout",
                            "80", "-v", log=tmp / "server.log")}
    for org in ORGS:
        procs[org] = _cli("client", *common, "--org", org, "--server", f"127.0.0.1:{port}",
                          "--out", tmp / f"client-{org}", "--retry-initial", "0.2",
                          "--retry-deadline", "80", "--json", log=tmp / f"{org}.log")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_experiment(cfg, tmp / "reference", progress=False)
    finally:
        torch.set_num_threads(threads)
        _wait(procs, tmp, timeout=85)
    return {"tmp": tmp, "cfg": cfg}


def _check_matches_simulator(run: dict, compared: tuple[str, ...] = COMPARED) -> None:
    tmp, cfg = run["tmp"], run["cfg"]
    rows = _rows(tmp / "server" / "metrics.csv")
    rounds = [str(r) for r in range(1, cfg.training.rounds + 1)] + ["final"]
    got = {(r["round"], r["client"]): r for r in rows}
    assert sorted(got) == sorted((r, c) for r in rounds for c in ORGS)
    ref = {(r["round"], r["client"]): r for r in _rows(tmp / "reference" / "metrics.csv")
           if r["method"] == cfg.muscle.method}
    assert sorted(ref) == sorted(got)
    for key, row in ref.items():  # exact: same code, seeds and thread count
        for col in compared:
            assert got[key][col] == row[col], f"{key} {col}: gRPC {got[key][col]} vs sim {row[col]}"
        assert float(got[key]["bytes_sent"]) > 0 or key[0] == "final"
    for org in ORGS:  # each client printed its final metrics; they are the server's rows
        final = json.loads((tmp / f"{org}.log").read_text().strip().splitlines()[-1])
        assert f"{final['test_metric']:.6g}" == ref[("final", org)]["test_metric"]
        assert (tmp / f"client-{org}" / "ledger" / f"{org}.jsonl").is_file()
    events = [json.loads(line)["event"]
              for line in (tmp / "server" / "events.jsonl").read_text().splitlines()]
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("round_end") == cfg.training.rounds
    assert (tmp / "server" / "summary.md").is_file()


def test_plain_deployment_matches_the_simulator(tmp_path):
    _check_matches_simulator(_deploy(tmp_path, tiny_config(compare_local=False)))


def test_a_client_killed_mid_run_is_dropped_and_the_others_finish(tmp_path):
    """SIGKILL one client process once round 1 is over (the server has already sent round
    2's plan): its stream ends, the server treats it as a Leave and completes the run."""
    cfg = tiny_config(compare_local=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    certs, port = _provision(tmp_path), _free_port()
    common = ["--config", config, "--certs", certs, "--threads", "1"]
    procs = {"server": _cli("server", *common, "--listen", f"127.0.0.1:{port}", "--out",
                            tmp_path / "server", "--connect-timeout", "80", "--round-timeout",
                            "80", log=tmp_path / "server.log")}
    for org in ORGS:
        procs[org] = _cli("client", *common, "--org", org, "--server", f"127.0.0.1:{port}",
                          "--out", tmp_path / f"client-{org}", "--retry-initial", "0.2",
                          "--retry-deadline", "80", log=tmp_path / f"{org}.log")
    events = tmp_path / "server" / "events.jsonl"
    t_end = time.monotonic() + 80
    while not (events.is_file() and '"round_end"' in events.read_text()):
        if time.monotonic() > t_end or procs["server"].poll() is not None:
            break
        time.sleep(0.1)
    procs.pop("c").kill()
    _wait(procs, tmp_path, timeout=80)
    got = {(r["round"], r["client"]) for r in _rows(tmp_path / "server" / "metrics.csv")}
    assert got == {("1", c) for c in ORGS} | {(r, c) for r in ("2", "3", "final") for c in "ab"}
    left = [json.loads(line) for line in events.read_text().splitlines()
            if json.loads(line)["event"] == "client_left"]
    assert [(e["client"], e["round"]) for e in left] == [("c", 2)]
    assert left[0]["reason"].startswith("transport: ")


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
    certs = _provision(tmp_path, orgs=(*ORGS, "d"))
    pki.revoke(certs, "c")
    cfg = tiny_config(compare_local=False)
    setup = federation_setup(cfg, make_split(cfg), "muscle")
    coordinator = Coordinator(build_server(cfg, "muscle", setup), final_round=4)
    server, port = start_grpc_server(coordinator, pki.load_trust(certs), certs, "127.0.0.1:0",
                                     TransportOptions())
    yield certs, coordinator, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _channel(target: str, ca: Path, org_dir: Path, org: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), (org_dir / f"{org}.key").read_bytes(),
                                         (org_dir / f"{org}.crt").read_bytes())
    return grpc.secure_channel(target, creds)


def _exchange(channel: grpc.Channel) -> grpc.RpcError | None:
    """Open Exchange, send nothing, read to the end; the error the server ended it with."""
    with channel:
        try:
            for _ in rpc.FedMuscleStub(channel).Exchange(iter(()), timeout=20):
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
    foreign = _provision(tmp_path, name="other")  # same org name "a", another CA
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
