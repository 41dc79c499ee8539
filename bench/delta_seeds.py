"""Δ of FedMuscle (exact), pairwise InfoNCE and the sum form over local training, per seed.

Runs a config's local reference once per seed and each method on the same split and
initialisation, then prints per seed: Δ (%), the mean absolute gain in points and
wins/losses per client (DESIGN §2.4), on the test split and on the validation split held
out of each private shard (the one to tune on). Usage:

    python bench/delta_seeds.py [CONFIG] [--seeds 0 1 2] [--methods muscle pairwise muscle_sum]
        [--out DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from fedmuscle_secure.experiment.run import run_method
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.federation.checks import load_config, with_overrides
from fedmuscle_secure.federation.split import make_split


def _one(config: str, seed: int, method: str, out: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = with_overrides(load_config(config), {"seed": seed})
    run = RunDir(Path(out) / f"seed{seed}")
    run.create()
    rows = run_method(cfg, make_split(cfg), method, run, resume=False, progress=False, prior_rows=[])
    final = [r for r in rows if r["round"] == "final"]
    secs = sum(float(r["wall_time_s"]) for r in rows)
    return {"seed": seed, "method": method, "compute_s": secs,
            "test": {r["client"]: float(r["test_metric"]) for r in final},
            "val": {r["client"]: float(r["val_metric"]) for r in final}}


def _delta(ours: dict[str, float], local: dict[str, float]) -> tuple[float, float, int, int]:
    rel = [100 * (ours[c] - local[c]) / local[c] for c in local]
    pts = [100 * (ours[c] - local[c]) for c in local]
    return (sum(rel) / len(rel), sum(pts) / len(pts), sum(ours[c] > local[c] for c in local),
            sum(ours[c] < local[c] for c in local))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/digits.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["muscle", "pairwise", "muscle_sum"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the raw results here")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="delta-")
    jobs = [(args.config, s, m, f"{out}/{m}", max(1, 2 // args.jobs))
            for s in args.seeds for m in ["local", *args.methods]]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_one, *zip(*jobs, strict=True)))
    by = {(r["seed"], r["method"]): r for r in results}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    clients = list(by[(args.seeds[0], "local")]["test"])
    print(f"config {args.config}; seeds {args.seeds}; clients {clients}")
    for split in ("test", "val"):
        print(f"\n## {split} split")
        print("| method | seed | Δ (%) | mean gain (points) | wins/losses | per client (points) |")
        print("|---|---|---:|---:|---|---|")
        for m in args.methods:
            deltas, gains = [], []
            for s in args.seeds:
                ours, local = by[(s, m)][split], by[(s, "local")][split]
                d, g, w, lo = _delta(ours, local)
                deltas.append(d)
                gains.append(g)
                per = ", ".join(f"{c} {100 * (ours[c] - local[c]):+.1f}" for c in clients)
                print(f"| {m} | {s} | {d:+.2f} | {g:+.2f} | {w}/{lo} | {per} |")
            sd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            print(f"| {m} | mean ± sd | {statistics.mean(deltas):+.2f} ± {sd:.2f} | "
                  f"{statistics.mean(gains):+.2f} | | |")
    print("\nlocal reference (test metric per client, per seed):")
    for s in args.seeds:
        print(f"  seed {s}: " + ", ".join(f"{c} {100 * v:.1f}" for c, v in by[(s, 'local')]['test'].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
