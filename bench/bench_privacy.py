"""Overhead of differential privacy on a FedMuscle round (issue: privacy, item 9).

Side by side in one process, on the default config's clients and data: the median wall
time of a round in plain mode, with representation noise (client-level DP: CSPRNG
Gaussian noise on every release, plus the accountant and the signed ledger), and with
DP-SGD in LocalUpdate (record-level DP, Opacus). Prints the ratios against plain.
Targets: representation noise <= 1.05x plain.

    python bench/bench_privacy.py [CONFIG] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _stopwatch import Stopwatch
from fedmuscle_secure.client.privacy import ClientPrivacy

from fedmuscle_secure.config import load_config
from fedmuscle_secure.experiment import make_split
from fedmuscle_secure.simulator import build_federation, run_round

# the client's privacy machinery (clip, noise, accountant, ledger): the overhead itself
PRIVACY = Stopwatch()


ClientPrivacy.release = PRIVACY.wrap(ClientPrivacy.release)
ClientPrivacy.end_round = PRIVACY.wrap(ClientPrivacy.end_round)


def _rounds(cfg, split, rounds: int, record: bool) -> list[float]:
    """Wall time of each round of a fresh federation."""
    with tempfile.TemporaryDirectory() as tmp:
        fed = build_federation(cfg, split, cfg.muscle.method, record_dir=Path(tmp) if record else None)
        times = []
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            run_round(fed, r)
            times.append(time.perf_counter() - t0)
        return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/digits.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.config).with_overrides(**{"training.rounds": args.rounds})
    split = make_split(base)
    variants = {
        "plain": (base, False),
        "plain+ledger": (base, True),
        # as shipped in digits-dp-client.yaml / digits-dp.yaml: ε = 8 at δ = 1e-5, calibrated
        "repr. noise": (base.with_overrides(**{"privacy.representation_noise.enabled": True,
                                               "privacy.representation_noise.target_epsilon": 8.0}), True),
        "DP-SGD": (base.with_overrides(**{"privacy.dp_sgd.enabled": True,
                                          "privacy.dp_sgd.target_epsilon": 8.0}), True),
    }
    print(f"# bench_privacy: {args.config}, {args.rounds} rounds each, {args.threads} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    results, inside = {}, {}
    for name, (cfg, record) in variants.items():
        PRIVACY.take()
        times = _rounds(cfg, split, args.rounds, record)
        results[name] = statistics.median(times)
        inside[name] = PRIVACY.take() / args.rounds
        print(f"{name:>14}: median round {results[name]:7.2f} s, of which privacy machinery "
              f"{inside[name]:.3f} s  (rounds: " + ", ".join(f"{t:.2f}" for t in times) + ")",
              flush=True)
    print("\nratios against plain (same process, same data and models)")
    for name, t in results.items():
        print(f"{name:>14}: {t / results['plain']:.3f}x round time; privacy machinery alone "
              f"{1 + inside[name] / results['plain']:.3f}x")
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
