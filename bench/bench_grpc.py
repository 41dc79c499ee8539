"""Deployment over gRPC + mutual TLS vs the in-process simulator, side by side in one run.

The config (default: configs/digits.yaml with ``training.rounds`` overridden to 2 and
``compare_local`` off) runs twice, one after the other so the two never share the CPU:

1. in-process: ``build_federation`` + ``run_round`` with one torch thread;
2. deployed on 127.0.0.1: a PKI provisioned into a temp dir, one server process and one
   client process per organisation, each with ``--threads 1``; round times are the
   server's ``round_end`` events (events.jsonl), traffic its metrics.csv;
3. in-process again with as many torch threads as cores (the fairer comparison on a small
   machine, where the deployment's processes train in parallel), with every message also
   protobuf-encoded to size the encoding overhead.

Printed per round: simulator wall times, gRPC wall time, the ratios gRPC/simulator, and the
bytes each client sent / received, twice: the tensor payload of each message
(``messages.payload_bytes``, the server's metrics.csv, the same count as the simulator's) and
the bytes actually on the wire: every client connects through its own counting TCP relay on
127.0.0.1, so TLS records, HTTP/2 frames, protobuf and chunk headers, keep-alive pings and
the handshake are all in that count. Note that the deployment's processes (server + N
clients) share the machine's cores, while the simulator runs the clients one after another
in one process.

    python bench/bench_grpc.py [CONFIG] [--protection plain|secagg|ckks] [--rounds 2]
    python bench/bench_grpc.py configs/digits-secagg.yaml   # secagg trains the sum form
    python bench/bench_grpc.py configs/digits-ckks.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

from fedmuscle_secure import simulator
from fedmuscle_secure.experiment.run import methods_of
from fedmuscle_secure.federation.checks import load_config
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.simulator import build_federation, run_round
from fedmuscle_secure.transport.codec import encode

ROOT = Path(__file__).resolve().parent.parent


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WireCounter:
    """One TCP relay per organisation on 127.0.0.1 that forwards to the server and counts
    the bytes in each direction: what the client's socket really sent and received."""

    def __init__(self, orgs: list[str], upstream: int):
        self.upstream = upstream
        self.sent = dict.fromkeys(orgs, 0)  # client -> server
        self.received = dict.fromkeys(orgs, 0)  # server -> client
        self.ports: dict[str, int] = {}
        self._lock = threading.Lock()
        self._listeners = []
        for org in orgs:
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(8)
            self.ports[org] = ls.getsockname()[1]
            self._listeners.append(ls)
            threading.Thread(target=self._accept, args=(ls, org), daemon=True).start()

    def _accept(self, ls: socket.socket, org: str) -> None:
        while True:
            try:
                down, _ = ls.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()
                continue
            for src, dst, table in ((down, up, self.sent), (up, down, self.received)):
                threading.Thread(target=self._pump, args=(src, dst, table, org),
                                 daemon=True).start()

    def _pump(self, src, dst, table, org) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    table[org] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for ls in self._listeners:
            ls.close()


def simulate(cfg, threads: int, count: dict | None = None) -> dict[int, float]:
    """Seconds per round of the in-process simulator with ``threads`` torch threads.

    With ``count``, every message is also protobuf-encoded (``wire.encode``, what the
    deployment puts in its chunks) and ``count`` accumulates payload vs encoded bytes and the
    seconds spent encoding (inside the timed rounds: subtract them to compare).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    original = simulator.payload_bytes
    if count is not None:
        def counted(msg):
            n = original(msg)
            t0 = time.perf_counter()
            count["encoded"] += len(encode(msg))
            count["encode_s"] += time.perf_counter() - t0
            count["payload"] += n
            return n
        simulator.payload_bytes = counted
    try:
        fed = build_federation(cfg, make_split(cfg), methods_of(cfg)[0])
        try:
            out = {}
            for r in range(1, cfg.training.rounds + 1):
                t0 = time.perf_counter()
                run_round(fed, r)
                out[r] = time.perf_counter() - t0
            return out
        finally:
            fed.close()
    finally:
        simulator.payload_bytes = original
        torch.set_num_threads(before)


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "fedmuscle_secure.cli.main", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _certs(cfg, config: Path, pki: Path, tmp: Path) -> tuple[Path, Path]:
    """The server's and the organisations' ``--certs`` dirs. Under ckks the key holder's
    ``provision ckks`` output is split: the public context to the server, the secret one to
    the organisations (the server refuses a secret key)."""
    if cfg.protection != "ckks":
        return pki, pki
    keys = tmp / "ckks-keys"
    subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli.main", "provision", "ckks",
                    "--config", str(config), "--out", str(keys)], check=True,
                   stdout=subprocess.DEVNULL)
    dirs = []
    for role, ctx in (("server", "public.ctx"), ("orgs", "secret.ctx")):
        d = tmp / f"certs-{role}"
        shutil.copytree(pki, d)
        (d / "ckks").mkdir()
        shutil.copy(keys / "ckks" / ctx, d / "ckks" / ctx)
        dirs.append(d)
    return dirs[0], dirs[1]


def deploy(cfg, config: Path, tmp: Path, timeout: float):
    """Round seconds (server events), metrics rows, the whole run's wall time and the
    bytes each organisation's socket sent/received (:class:`WireCounter`)."""
    orgs = [c.name for c in cfg.clients]
    project = tmp / "project.yaml"
    project.write_text(yaml.safe_dump({
        "name": "bench-grpc", "server": {"name": "fl-server", "hosts": ["127.0.0.1"]},
        "organizations": [{"name": o, "client_id": o} for o in orgs]}))
    certs = tmp / "pki"
    subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli.main", "provision", "init",
                    "--project", str(project), "--out", str(certs)], check=True,
                   stdout=subprocess.DEVNULL)
    server_certs, org_certs = _certs(cfg, config, certs, tmp)
    port = _free_port()
    wire = WireCounter(orgs, port)
    common = ["--config", str(config), "--threads", "1"]
    t0 = time.perf_counter()
    procs = {"server": _cli(["server", *common, "--certs", str(server_certs),
                             "--listen", f"127.0.0.1:{port}", "--out", str(tmp / "server")],
                            tmp / "server.log")}
    for org in orgs:
        procs[org] = _cli(["client", *common, "--certs", str(org_certs), "--org", org,
                           "--server", f"127.0.0.1:{wire.ports[org]}",
                           "--out", str(tmp / f"client-{org}")], tmp / f"{org}.log")
    codes = {}
    try:
        for name, p in procs.items():
            codes[name] = p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        wire.close()
    total = time.perf_counter() - t0
    if len(codes) != len(procs) or any(codes.values()):
        logs = "\n".join(f"--- {n}\n{(tmp / f'{n}.log').read_text()[-2000:]}" for n in procs)
        raise SystemExit(f"deployment failed, exit codes {codes}\n{logs}")
    events = [json.loads(line) for line in (tmp / "server" / "events.jsonl").read_text()
              .splitlines()]
    rounds = {e["round"]: e["seconds"] for e in events if e["event"] == "round_end"}
    with open(tmp / "server" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return rounds, rows, total, wire


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "digits.yaml"))
    ap.add_argument("--protection", choices=["plain", "secagg", "ckks"],
                    help="override the config's protection mode")
    ap.add_argument("--rounds", type=int, default=2, help="training.rounds override")
    ap.add_argument("--timeout", type=float, default=900.0, help="deployment limit, seconds")
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.config).read_text())
    raw.setdefault("training", {})["rounds"] = args.rounds
    raw["compare_local"] = False
    if args.protection:
        raw["protection"] = args.protection
    print(f"load average at start (1/5/15 min): {_load()}  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as d:
        tmp = Path(d)
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        cfg = load_config(config)
        n = len(cfg.clients)
        print(f"config {args.config}: {n} clients, {cfg.training.rounds} rounds, "
              f"method {cfg.muscle.method}, protection {cfg.protection}")
        cores = os.cpu_count() or 1
        sim = simulate(cfg, 1)
        rounds, rows, total, wire = deploy(cfg, config, tmp, args.timeout)
        count = {"payload": 0, "encoded": 0, "encode_s": 0.0}
        sim_all = simulate(cfg, cores, count)

    print(f"\nwall time per round (simulator: 1 process, 1 torch thread; gRPC: server + {n} "
          f"client processes, 1 torch thread each, 127.0.0.1, mutual TLS)")
    print(f"{'round':>5}  {'sim 1 thr':>10}  {'gRPC':>10}  {'gRPC/sim':>8}  "
          f"{f'sim {cores} thr':>10}  {'gRPC/sim':>8}")
    for r in sorted(sim):
        print(f"{r:>5}  {sim[r]:>9.2f}s  {rounds[r]:>9.2f}s  {rounds[r] / sim[r]:>7.2f}x  "
              f"{sim_all[r]:>9.2f}s  {rounds[r] / sim_all[r]:>7.2f}x")
    s, g, a = sum(sim.values()), sum(rounds.values()), sum(sim_all.values())
    print(f"{'all':>5}  {s:>9.2f}s  {g:>9.2f}s  {g / s:>7.2f}x  {a:>9.2f}s  {g / a:>7.2f}x")
    print(f"(the {cores}-thread simulator run also protobuf-encodes every message: "
          f"{count['encode_s']:.3f}s of encoding in its {a:.2f}s)")
    print(f"gRPC run end to end (process start, data, models, connect, rounds, final "
          f"evaluation): {total:.1f}s")

    print("\nbytes per client per round (server's metrics.csv: tensor payload only, "
          "no protobuf/HTTP2/TLS framing; the wire count follows)")
    print(f"{'round':>5}  {'client':<14}  {'sent':>10}  {'received':>10}")
    for row in rows:
        if row["round"] == "final":
            continue
        print(f"{row['round']:>5}  {row['client']:<14}  "
              f"{float(row['bytes_sent']) / 1e6:>8.3f}MB  "
              f"{float(row['bytes_received']) / 1e6:>8.3f}MB")
    print(f"all messages of the simulator's rounds, protobuf-encoded (wire.encode) vs payload: "
          f"{count['encoded'] / 1e6:.3f}MB vs {count['payload'] / 1e6:.3f}MB "
          f"({count['encoded'] / count['payload']:.4f}x)")

    R = cfg.training.rounds
    print(f"\nbytes on the wire per client (its TCP connection through a counting relay: TLS, "
          f"HTTP/2, protobuf, chunk headers, handshake, keep-alive; the whole run = {R} rounds "
          f"+ connect + final exchange), against the payload of its {R} rounds")
    print(f"{'client':<14}  {'wire sent':>10}  {'wire recv':>10}  {'/round sent':>11}  "
          f"{'/round recv':>11}  {'wire/payload':>12}")
    for org in wire.sent:
        mine = [r for r in rows if r["client"] == org and r["round"] != "final"]
        payload = sum(float(r["bytes_sent"]) + float(r["bytes_received"]) for r in mine)
        on_wire = wire.sent[org] + wire.received[org]
        print(f"{org:<14}  {wire.sent[org] / 1e6:>8.3f}MB  {wire.received[org] / 1e6:>8.3f}MB  "
              f"{wire.sent[org] / R / 1e6:>9.3f}MB  {wire.received[org] / R / 1e6:>9.3f}MB  "
              f"{on_wire / payload if payload else float('nan'):>11.3f}x")
    print(f"\nload average at end (1/5/15 min): {_load()}")


if __name__ == "__main__":
    main()
