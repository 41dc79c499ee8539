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
bytes each client sent / received. Those byte columns count the tensor payload of each
message (``messages.payload_bytes``, the same count as the simulator's), not protobuf,
HTTP/2 or TLS framing. Note that the deployment's processes (server + N clients) share the
machine's cores, while the simulator runs the clients one after another in one process.

    python bench/bench_grpc.py [CONFIG] [--rounds 2] [--timeout 900]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from fedmuscle_secure import simulator
from fedmuscle_secure.config import load_config
from fedmuscle_secure.experiment import make_split, methods_of
from fedmuscle_secure.simulator import build_federation, run_round
from fedmuscle_secure.wire import encode

ROOT = Path(__file__).resolve().parent.parent


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        return subprocess.Popen([sys.executable, "-m", "fedmuscle_secure.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def deploy(cfg, config: Path, tmp: Path, timeout: float) -> tuple[dict, list[dict], float]:
    """Round seconds (server events), metrics rows, and the whole run's wall time."""
    orgs = [c.name for c in cfg.clients]
    project = tmp / "project.yaml"
    project.write_text(yaml.safe_dump({
        "name": "bench-grpc", "server": {"name": "fl-server", "hosts": ["127.0.0.1"]},
        "organizations": [{"name": o, "client_id": o} for o in orgs]}))
    certs = tmp / "pki"
    subprocess.run([sys.executable, "-m", "fedmuscle_secure.cli", "provision", "init",
                    "--project", str(project), "--out", str(certs)], check=True,
                   stdout=subprocess.DEVNULL)
    port = _free_port()
    common = ["--config", str(config), "--certs", str(certs), "--threads", "1"]
    t0 = time.perf_counter()
    procs = {"server": _cli(["server", *common, "--listen", f"127.0.0.1:{port}",
                             "--out", str(tmp / "server")], tmp / "server.log")}
    for org in orgs:
        procs[org] = _cli(["client", *common, "--org", org, "--server", f"127.0.0.1:{port}",
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
    total = time.perf_counter() - t0
    if len(codes) != len(procs) or any(codes.values()):
        logs = "\n".join(f"--- {n}\n{(tmp / f'{n}.log').read_text()[-2000:]}" for n in procs)
        raise SystemExit(f"deployment failed, exit codes {codes}\n{logs}")
    events = [json.loads(line) for line in (tmp / "server" / "events.jsonl").read_text()
              .splitlines()]
    rounds = {e["round"]: e["seconds"] for e in events if e["event"] == "round_end"}
    with open(tmp / "server" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return rounds, rows, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "digits.yaml"))
    ap.add_argument("--rounds", type=int, default=2, help="training.rounds override")
    ap.add_argument("--timeout", type=float, default=900.0, help="deployment limit, seconds")
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.config).read_text())
    raw.setdefault("training", {})["rounds"] = args.rounds
    raw["compare_local"] = False
    print(f"load average at start (1/5/15 min): {_load()}  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as d:
        tmp = Path(d)
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        cfg = load_config(config)
        if cfg.protection not in ("plain", "secagg"):
            raise SystemExit(f"protection {cfg.protection!r} is not supported over gRPC")
        if cfg.protection == "secagg":
            raise SystemExit("secagg needs per-org identities; this bench runs plain configs")
        n = len(cfg.clients)
        print(f"config {args.config}: {n} clients, {cfg.training.rounds} rounds, "
              f"method {cfg.muscle.method}, protection {cfg.protection}")
        cores = os.cpu_count() or 1
        sim = simulate(cfg, 1)
        rounds, rows, total = deploy(cfg, config, tmp, args.timeout)
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
          "no protobuf/HTTP2/TLS framing)")
    print(f"{'round':>5}  {'client':<14}  {'sent':>10}  {'received':>10}")
    for row in rows:
        if row["round"] == "final":
            continue
        print(f"{row['round']:>5}  {row['client']:<14}  "
              f"{float(row['bytes_sent']) / 1e6:>8.3f}MB  "
              f"{float(row['bytes_received']) / 1e6:>8.3f}MB")
    print(f"all messages of the simulator's rounds, protobuf-encoded (wire.encode) vs payload: "
          f"{count['encoded'] / 1e6:.3f}MB vs {count['payload'] / 1e6:.3f}MB "
          f"({count['encoded'] / count['payload']:.4f}x; gRPC chunk headers, HTTP/2 and TLS "
          f"records come on top and are not counted)")
    print(f"\nload average at end (1/5/15 min): {_load()}")


if __name__ == "__main__":
    main()
