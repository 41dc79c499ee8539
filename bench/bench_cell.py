"""One compare cell, the earlier code path against today's, side by side in one process.

The cell is the one every published grid is made of: ``configs/digits.yaml`` (four clients,
four timm architectures, R = 10, E = 5, per_batch exchange), one method, no protection, no
DP, one torch thread (``compare --jobs 2 --threads 1`` runs cells this way). The two paths:

* **before**: ``training.fused_optimizer: false`` (PyTorch's per-tensor Adam loop) and
  ``training.channels_last: false`` (convolutions in NCHW);
* **now**: the defaults (Adam's fused kernel; channels-last convolution backbones).

They run alternately (before, now, before, now, ...), so both see the same load; the ratio
is of the medians. Every run's per-client final test metrics are printed, with the largest
per-client difference between the two paths. To know whether that difference is a change
of results or the ordinary float-rounding spread, the same cell also runs on the *before*
path with 2 threads: a different thread count changes only the order of float sums, so its
difference from the 1-thread run is the spread a kernel change is held to.

    python bench/bench_cell.py                   # full cell, 2 repeats (about 15 min)
    python bench/bench_cell.py --rounds 3 --repeats 1 --method muscle_sum
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.federation.checks import load_config

ROOT = Path(__file__).resolve().parent.parent
BEFORE = {"training.fused_optimizer": False, "training.channels_last": False}
NOW = {"training.fused_optimizer": True, "training.channels_last": True}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_cell(cfg, overrides: dict, threads: int) -> tuple[float, dict[str, float]]:
    """Wall seconds of the whole cell (build, rounds, closing update, records) and its
    per-client final test metrics in percent."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_experiment(cfg.with_overrides(**overrides), Path(tmp) / "cell", progress=False)
        wall = time.perf_counter() - t
    method = next(iter(res.final))
    return wall, {c: 100 * v for c, v in res.final[method].items()}


def _row(label: str, wall: float, metrics: dict[str, float]) -> str:
    return f"{label:<22} {wall:8.1f}  " + "  ".join(f"{c}={v:6.2f}" for c, v in metrics.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    ap.add_argument("--method", default="muscle")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(args.config).with_overrides(**{
        "muscle.method": args.method, "training.rounds": args.rounds, "compare_local": False,
        "seed": args.seed})
    print(f"# bench_cell: {args.config}, method {args.method}, R = {args.rounds}, seed "
          f"{args.seed}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"load average at start {_load()}")
    print(f"{'path':<22} {'wall s':>8}  per-client final test metric (%)")
    walls: dict[str, list[float]] = {"before": [], "now": []}
    metrics: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for label, over in (("before", BEFORE), ("now", NOW)):
            wall, m = run_cell(cfg, over, threads=1)
            walls[label].append(wall)
            metrics[label] = m  # identical on every repeat: same seed, same thread count
            print(_row(f"{label}, 1 thread", wall, m), flush=True)
    wall2, m2 = run_cell(cfg, BEFORE, threads=2)
    print(_row("before, 2 threads", wall2, m2), flush=True)
    before, now = statistics.median(walls["before"]), statistics.median(walls["now"])
    change = max(abs(metrics["now"][c] - metrics["before"][c]) for c in metrics["now"])
    spread = max(abs(m2[c] - metrics["before"][c]) for c in m2)
    print(f"\nmedian wall: before {before:.1f} s, now {now:.1f} s; speed-up x{before / now:.2f}")
    print(f"largest per-client change now vs before: {change:.2f} points; thread-count spread "
          f"(before, 2 vs 1 thread): {spread:.2f} points")
    print(f"load average at end {_load()}")


if __name__ == "__main__":
    main()
