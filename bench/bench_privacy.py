"""Overhead of differential privacy on a FedMuscle round.

Side by side in one process, on the default config's clients and data: the median wall
time of a round in plain mode, with representation noise (client-level DP: CSPRNG
Gaussian noise on every release, plus the accountant and the signed ledger), and with
DP-SGD in LocalUpdate (record-level DP, Opacus). Prints the ratios against plain.
Targets: representation noise <= 1.05x plain.

Then DP-SGD's Poisson sampling alone: one epoch (1/q steps, each a mask over n records) drawn
from the ChaCha20 CSPRNG (``dp.sampling``, what DPSGDTrainer uses) against Opacus's sampler
on a secretly seeded torch MT19937 generator (what it used before), side by side, as a ratio.

    python bench/bench_privacy.py [CONFIG] [--rounds 3] [--threads 2] [--sampling-only]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _stopwatch import Stopwatch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedmuscle_secure.client.privacy import ClientPrivacy
from fedmuscle_secure.dp.sampling import CsprngPoissonSampler
from fedmuscle_secure.federation.checks import load_config, with_overrides
from fedmuscle_secure.federation.split import make_split
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


# (private records n, expected batch size B): a digits client's shard at the shipped B = 32,
# then MNIST-sized and larger shards
SAMPLING_SIZES = ((120, 32), (1_000, 32), (10_000, 64), (60_000, 256))


def _epoch(sampler) -> float:
    t0 = time.perf_counter()
    for _ in sampler:
        pass
    return time.perf_counter() - t0


def sampling_table(budget_s: float = 1.0) -> None:
    """Median time of one sampling epoch, MT19937 and CSPRNG alternating (so load drift
    hits both), each on a fresh sampler, for at least ``budget_s`` per size."""
    print("\nDP-SGD Poisson sampling, one epoch = 1/q steps of n draws (median over repeats)")
    print(f"{'n':>7} {'B':>4} {'steps':>5} {'MT19937 ms':>11} {'CSPRNG ms':>10} {'CSPRNG/MT':>10} {'repeats':>8}")
    for n, b in SAMPLING_SIZES:
        steps = math.ceil(n / b)  # Opacus: q = 1 / ceil(n / B), int(1 / q) steps
        q = 1 / steps
        mt, cs = [], []
        end = time.perf_counter() + budget_s
        while len(mt) < 5 or time.perf_counter() < end:
            gen = torch.Generator().manual_seed(secrets.randbits(63))
            mt.append(_epoch(UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=gen)))
            cs.append(_epoch(CsprngPoissonSampler(num_samples=n, sample_rate=q, steps=steps)))
        m, c = statistics.median(mt), statistics.median(cs)
        print(f"{n:>7} {b:>4} {steps:>5} {1e3 * m:>11.3f} {1e3 * c:>10.3f} {c / m:>9.2f}x {len(mt):>8}",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/digits.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampling-only", action="store_true",
                    help="only the Poisson sampling table (seconds, not minutes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.sampling_only:
        print(f"# bench_privacy --sampling-only: {args.threads} threads, torch {torch.__version__}, "
              f"load average {os.getloadavg()[0]:.2f}")
        sampling_table()
        print(f"# load average at end: {os.getloadavg()[0]:.2f}")
        return 0
    base = with_overrides(load_config(args.config), {"training.rounds": args.rounds})
    split = make_split(base)
    variants = {
        "plain": (base, False),
        "plain+ledger": (base, True),
        # as shipped in digits-dp-client.yaml / digits-dp.yaml: ε = 8 at δ = 1e-5, calibrated
        "repr. noise": (with_overrides(base, {"privacy.representation_noise.enabled": True,
                                               "privacy.representation_noise.target_epsilon": 8.0}), True),
        "DP-SGD": (with_overrides(base, {"privacy.dp_sgd.enabled": True,
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
    sampling_table()
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
