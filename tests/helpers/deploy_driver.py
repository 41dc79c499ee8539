"""Processes and PKI for the deployment tests (tests only): provision on loopback, start
``fedmuscle-secure server`` / ``client`` processes, wait for them, read their metrics."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.provision.keys import make_identity

ORGS = ("a", "b", "c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision(root: Path, orgs=ORGS, name: str = "grpc-test") -> Path:
    """The CA directory of ``provision init`` (with every org's Ed25519 identity)."""
    project = pki.parse_project({
        "name": name, "server": {"name": "fl-server", "hosts": ["localhost", "127.0.0.1"]},
        "organizations": [{"name": o, "client_id": o} for o in orgs]})
    certs = pki.init_ca_dir(project, root / f"pki-{name}")
    for o in orgs:
        make_identity(o, certs)
    return certs


def cli(*args: str | Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "fedmuscle_secure.cli.main", *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, subprocess.Popen], logs: Path, timeout: float) -> None:
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


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t_end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > t_end or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def start_federation(tmp: Path, config: Path, certs: Path, orgs=ORGS, *, port: int,
                     client_args=(), server_args=(), env: dict | None = None,
                     ) -> dict[str, subprocess.Popen]:
    """One server process and one process per org, one torch thread each; ``env`` adds
    environment variables per org."""
    common = ["--config", config, "--certs", certs, "--threads", "1"]
    procs = {"server": server(tmp, config, certs, port, *server_args)}
    for org in orgs:
        procs[org] = cli("client", *common, "--org", org, "--server", f"127.0.0.1:{port}",
                         "--out", tmp / f"client-{org}", "--retry-initial", "0.2",
                         "--retry-deadline", "120", *client_args, log=tmp / f"{org}.log",
                         env=(env or {}).get(org))
    return procs


def server(tmp: Path, config: Path, certs: Path, port: int, *extra) -> subprocess.Popen:
    return cli("server", "--config", config, "--certs", certs, "--threads", "1", "--listen",
               f"127.0.0.1:{port}", "--out", tmp / "server", "--connect-timeout", "120",
               "--round-timeout", "120", "-v", *extra, log=tmp / "server.log")
