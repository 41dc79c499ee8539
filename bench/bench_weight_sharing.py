"""What one weight-sharing round costs under plain, secagg and ckks, side by side in one
process (DESIGN §2.7).

One FedAvg round of a config whose clients share one architecture (default: the grid base
of configs/compare-fmtl.yaml, four ResNet-10t), LocalUpdate shortened to ``--local-epochs``:
bytes each client sends and receives, the round's wall time, and under ckks the time spent
encrypting (client), adding (server) and decrypting (client), instrumented.

    python bench/bench_weight_sharing.py [CONFIG] [--local-epochs 1] [--threads 2]
        [--protections plain secagg ckks]
"""

from __future__ import annotations

import argparse
import time

import torch
from _stopwatch import Stopwatch

from fedmuscle_secure.client.protection.ckks import CkksClientProtection
from fedmuscle_secure.federation.checks import load_config, with_overrides
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.server.protection.ckks_weights import CkksWeightProtection
from fedmuscle_secure.simulator import build_federation, run_round

ENCRYPT, ADD, DECRYPT = Stopwatch(), Stopwatch(), Stopwatch()


def _instrument() -> None:
    CkksClientProtection.seal_weights = ENCRYPT.wrap(CkksClientProtection.seal_weights)
    CkksWeightProtection.weight_replies = ADD.wrap(CkksWeightProtection.weight_replies)
    CkksClientProtection.open = DECRYPT.wrap(CkksClientProtection.open)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/digits-homogeneous.yaml")
    ap.add_argument("--method", default="fedavg")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--protections", nargs="+", default=["plain", "secagg", "ckks"],
                    choices=["plain", "secagg", "ckks"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _instrument()
    base = load_config(args.config)
    print(f"== one {args.method} round, {len(base.clients)} clients "
          f"({', '.join(sorted({c.model for c in base.clients}))}), local_epochs "
          f"{args.local_epochs}, {args.threads} threads")
    print(f"{'protection':>10} {'MB sent/client':>15} {'MB recv/client':>15} {'round s':>8} "
          f"{'encrypt s':>10} {'server add s':>12} {'decrypt s':>10}")
    for protection in args.protections:
        cfg = with_overrides(base, {"protection": protection, "muscle.method": args.method,
                                    "training.rounds": 1,
                                    "training.local_epochs": args.local_epochs})
        fed = build_federation(cfg, make_split(cfg), args.method)
        layout = next(iter(fed.clients.values())).weights.layout()
        for w in (ENCRYPT, ADD, DECRYPT):
            w.take()
        t0 = time.perf_counter()
        try:
            stats = run_round(fed, 1)
        finally:
            fed.close()
        wall = time.perf_counter() - t0
        sent = max(s["bytes_sent"] for s in stats.values()) / 1e6
        recv = max(s["bytes_received"] for s in stats.values()) / 1e6
        n = len(stats)
        crypto = (f"{ENCRYPT.take() / n:>10.2f} {ADD.take():>12.2f} {DECRYPT.take() / n:>10.2f}"
                  if protection == "ckks" else f"{'':>10} {'':>12} {'':>10}")
        print(f"{protection:>10} {sent:>15.2f} {recv:>15.2f} {wall:>8.1f} {crypto}")
    print(f"shared parts {layout}; encrypt/decrypt per client, server add over all groups")


if __name__ == "__main__":
    main()
