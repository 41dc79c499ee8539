"""Secure aggregation cost, measured side by side in one process.

Part 1 — one exchange, N = 10 clients, two payloads (the per-epoch release of the default
config: nb·B·(d+1) int64, and one batch: B·(d+1)), 0 % and 30 % dropout (the dropped
clients stop after sending their encrypted shares, so the server must rebuild their mask
keys). Columns: median client compute per client (keys, encoding, shares, masks) and
server compute (routing, reconstruction, batched int64 unmasking, decoding); the ratio
to a plain exchange (clients send float32 Z, the server sums them: §2.2's U and q); and
Flower's SecAgg+ (flwr 1.41.0, full graph, same threshold) on the same N, vector length
and dropout, with the ratio Flower/ours of total compute (N·client + server).

Part 2 — one whole round of the default config (its 4 clients, LocalUpdate included) in
plain muscle-sum and in secagg, per_epoch and per_batch exchanges: the ratio the user
pays per round. Target: secagg round ≤ 1.3× plain; ours ≥ 2× faster than Flower.

    python bench/bench_secagg.py [CONFIG] [--repeats 5] [--threads 2] [--skip-round]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _stopwatch import Stopwatch

from fedmuscle_secure.crypto.identity import generate_identity
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.server import SecAggServer
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.federation.checks import load_config, with_overrides
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.server.computation import peer_sums
from fedmuscle_secure.simulator import build_federation

N_CLIENTS = 10


def _inputs(n: int, batches: int, rows: int, dim: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        z = torch.randn(batches, rows, dim, generator=g)
        out.append(z / z.norm(dim=-1, keepdim=True))
    return out


def ours(z: list[torch.Tensor], dropout: float, threshold: int) -> dict[str, float]:
    """One secagg instance; per-party compute time and a check of the decoded sum."""
    n = len(z)
    batches, rows, dim = z[0].shape
    names = [f"org-{i:02d}" for i in range(n)]
    enc = SumEncoding(batches=batches, rows=rows, dim=dim, group_size=n, value_clip=1.001,
                      sq_norm_clip=1.001)
    keys = {c: generate_identity() for c in names}
    pubs = {c: k.public_key() for c, k in keys.items()}
    dropped = set(names[n - round(dropout * n):]) if dropout else set()
    client_s, server_s = 0.0, 0.0
    t0 = time.perf_counter()
    server = SecAggServer(names, threshold, enc.vector_length, identities=pubs)
    setups = server.start()
    server_s += time.perf_counter() - t0
    clients, inbox = {}, []
    for setup, zi in zip(setups, z, strict=True):
        c = setup.recipient
        t0 = time.perf_counter()
        vector = enc.encode(zi.double(), (zi.double() ** 2).sum(-1))[0]
        clients[c] = SecAggClient(c, keys[c], {p: k for p, k in pubs.items() if p != c}, setup, vector)
        advert = clients[c].advertise()
        client_s += time.perf_counter() - t0
        inbox.append(advert)
    while inbox:
        replies = []
        t0 = time.perf_counter()
        for msg in inbox:
            replies += server.receive(msg)
        if not replies and server.result is None:
            replies = server.close_stage()
        server_s += time.perf_counter() - t0
        inbox = []
        for msg in replies:
            if msg.recipient in dropped and type(msg).__name__ == "ShareInbox":
                continue  # dropped after sending its shares: never sends a masked input
            t0 = time.perf_counter()
            inbox.append(clients[msg.recipient].handle(msg))
            client_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    u, _ = enc.decode(server.result)
    server_s += time.perf_counter() - t0
    want = sum(zi.double() for c, zi in zip(names, z, strict=True) if c not in dropped)
    correct = float((u - want).abs().max()) <= enc.z_codec.precision_for(n) * 2
    return {"client_s": client_s / n, "server_s": server_s, "total_s": client_s + server_s,
            "correct": float(correct)}


def plain(z: list[torch.Tensor]) -> dict[str, float]:
    """A plain exchange: each client sends float32 Z (a contiguous copy), the server forms
    U and q for everyone in one batched computation (the §2.2 sums)."""
    n = len(z)
    t0 = time.perf_counter()
    sent = [zi.float().contiguous().clone() for zi in z]
    client_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stacked = torch.stack(sent).flatten(1, 2)  # (N, nb·B, d)
    peer_sums(stacked, torch.ones(n, n) - torch.eye(n))
    server_s = time.perf_counter() - t0
    return {"client_s": client_s / n, "server_s": server_s, "total_s": client_s + server_s}


def _median(fn, repeats: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def exchange_table(cfg, repeats: int) -> None:
    try:
        from flower_secaggplus import FLOWER_VERSION, run_flower_secaggplus
    except RuntimeError as exc:  # flwr not installed
        print(f"(Flower column skipped: {exc})")
        run_flower_secaggplus, FLOWER_VERSION = None, None
    nb = cfg.data.public_size // cfg.muscle.batch_size
    b, d = cfg.muscle.batch_size, cfg.muscle.dim
    threshold = N_CLIENTS // 2 + 1
    print(f"\n== One exchange, N={N_CLIENTS}, threshold t={threshold}, medians of {repeats} "
          f"(Flower {FLOWER_VERSION or 'n/a'}) ==")
    print(f"{'payload':>22} {'drop':>5} {'ours client':>11} {'ours server':>11} {'ours total':>10} "
          f"{'plain total':>11} {'ours/plain':>10} {'Flower total':>12} {'Flower/ours':>11} ok")
    for label, batches in ((f"per epoch ({nb}x{b}x{d + 1})", nb), (f"one batch ({b}x{d + 1})", 1)):
        z = _inputs(N_CLIENTS, batches, b, d)
        length = batches * b * (d + 1)
        for dropout in (0.0, 0.3):
            o = _median(lambda z=z, dropout=dropout: ours(z, dropout, threshold), repeats)
            p = _median(lambda z=z: plain(z), repeats)
            f_total, ratio = float("nan"), float("nan")
            if run_flower_secaggplus is not None:
                f = run_flower_secaggplus(num_clients=N_CLIENTS, vector_length=length, dropout=dropout,
                                          threshold=threshold, repeats=repeats)
                f_total, ratio = f["total_s"], f["total_s"] / o["total_s"]
            print(f"{label:>22} {dropout:>5.0%} {o['client_s']:>10.4f}s {o['server_s']:>10.4f}s "
                  f"{o['total_s']:>9.4f}s {p['total_s']:>10.5f}s {o['total_s'] / p['total_s']:>9.0f}x "
                  f"{f_total:>11.4f}s {ratio:>10.2f}x {'yes' if o['correct'] else 'NO'}")


SECAGG = Stopwatch()  # encoding, keys, shares, masks, unmasking, decoding


def _instrument() -> None:
    from fedmuscle_secure.client.protection.secagg import SecAggClientProtection
    from fedmuscle_secure.server.protection.secagg import SecAggServerProtection

    for cls, names in ((SecAggClientProtection, ("begin", "handle")),
                       (SecAggServerProtection, ("handle", "start_round"))):
        for name in names:
            setattr(cls, name, SECAGG.wrap(getattr(cls, name)))


def round_table(cfg, repeats: int) -> None:
    print(f"\n== One round of {cfg.name} ({len(cfg.clients)} clients, muscle-sum), medians of "
          f"{repeats} rounds ==")
    print(f"{'exchange':>10} {'plain s':>9} {'secagg s':>9} {'secagg/plain':>12} "
          f"{'secagg machinery s':>18} {'(plain+machinery)/plain':>23}")
    _instrument()
    split = make_split(cfg)
    for exchange in ("per_epoch", "per_batch"):
        times = {}
        for protection in ("plain", "secagg"):
            c = with_overrides(cfg, {"muscle.method": "muscle_sum", "muscle.exchange": exchange,
                                      "muscle.num_selected": len(cfg.clients) - 1,
                                      "protection": protection, "training.rounds": repeats + 1})
            fed = build_federation(c, split, "muscle_sum")
            times[protection], times[protection + "_machinery"] = SECAGG.median_round(fed, repeats + 1)
        mach = times["secagg_machinery"]
        print(f"{exchange:>10} {times['plain']:>8.2f}s {times['secagg']:>8.2f}s "
              f"{times['secagg'] / times['plain']:>11.3f}x {mach:>17.3f}s "
              f"{(times['plain'] + mach) / times['plain']:>22.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/digits.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--round-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-round", action="store_true", help="only the exchange table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    cfg = load_config(args.config)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start "
          f"{os.getloadavg()[0]:.2f}")
    exchange_table(cfg, args.repeats)
    if not args.skip_round:
        round_table(cfg, args.round_repeats)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
