"""Benchmark of the contrastive losses (DESIGN §2.1, §2.2): time and peak memory.

For (B, M) in {(64,2), (128,2), (64,3), (128,3)}, d = 128, CPU, float32 inputs with
unit-norm rows and an anchor that requires grad, it measures the median wall time of one
forward + backward of

* factorized   — exact Muscle loss, factorized contraction (muscle_loss_from_server)
* broadcast    — exact Muscle loss, B^(M+1) logits materialized (chunked when large)
* sum          — muscle-sum loss (§2.2)
* infonce      — pairwise InfoNCE (γ = 0 baseline)
* bare_lse     — torch.logsumexp over a ready-made float32 (B, B^M) tensor with grad: the
                 floor any method that materializes all the logits has to pay

and the tuple enumeration oracle (reference.py, forward only) against the factorized form
(forward + backward) at B = 16, M = 2. Peak memory of each is measured in a fresh process
(``--one METHOD B M``): ru_maxrss after one call minus ru_maxrss after imports, tensor
creation and a warm-up call at B = 4. Every ratio is measured side by side in one run.

    python bench/bench_loss.py            # full run, a few minutes on 2 cores
    python bench/bench_loss.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from fedmuscle_secure.losses import (
    muscle_loss_broadcast,
    muscle_loss_from_server,
    muscle_sum_loss,
    pairwise_infonce_loss,
    server_side_terms,
)
from fedmuscle_secure.losses.reference import muscle_loss_enumerate

DEFAULT_THREADS = 2
DIM = 128
TAU = 0.2  # paper defaults (DESIGN §2.1): τ = 0.2, τ' = 0.15
TAU_PRIME = 0.15
GAMMA = 1 / TAU_PRIME - 1 / TAU
CONFIGS = [(64, 2), (128, 2), (64, 3), (128, 3)]
METHODS = ["factorized", "broadcast", "sum", "infonce", "bare_lse"]
ENUM_CONFIG = (16, 2)
# Largest broadcast logits tensor per chunk, in entries (2^25 float32 = 128 MiB).
BROADCAST_CHUNK_ENTRIES = 2**25


def broadcast_chunk(b: int, m: int) -> int | None:
    """Anchors per chunk so one chunk's logits stay under BROADCAST_CHUNK_ENTRIES."""
    per_anchor = b**m
    chunk = max(1, BROADCAST_CHUNK_ENTRIES // per_anchor)
    return None if chunk >= b else chunk


def make_step(method: str, b: int, m: int, seed: int = 0) -> Callable[[], torch.Tensor]:
    """Build the inputs of ``method`` at (B, M) and return a forward+backward closure.

    The server-side terms (S^n, log α pairs) are computed here, outside the timed region:
    the benchmark measures what a client pays per step.
    """
    gen = torch.Generator().manual_seed(seed)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    anchor = unit(torch.randn(b, DIM, generator=gen)).requires_grad_(True)
    peers = unit(torch.randn(m, b, DIM, generator=gen))
    tau = torch.full((m,), TAU)
    gamma = torch.full((m, m), GAMMA)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)

    if method == "factorized":

        def step() -> torch.Tensor:
            anchor.grad = None
            loss = muscle_loss_from_server(anchor, scaled, log_alpha)
            loss.backward()
            return loss.detach()

    elif method == "broadcast":
        chunk = broadcast_chunk(b, m)

        def step() -> torch.Tensor:
            anchor.grad = None
            loss = muscle_loss_broadcast(anchor, scaled, log_alpha, chunk_size=chunk)
            loss.backward()
            return loss.detach()

    elif method == "sum":
        peer_sum, peer_sq = peers.sum(0), (peers * peers).sum((0, 2))

        def step() -> torch.Tensor:
            anchor.grad = None
            loss = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=TAU, gamma=GAMMA)
            loss.backward()
            return loss.detach()

    elif method == "infonce":

        def step() -> torch.Tensor:
            anchor.grad = None
            loss = pairwise_infonce_loss(anchor, peers, tau)
            loss.backward()
            return loss.detach()

    elif method == "bare_lse":
        logits = torch.randn(b, b**m, generator=gen).requires_grad_(True)

        def step() -> torch.Tensor:
            logits.grad = None
            loss = torch.logsumexp(logits, dim=1).mean()
            loss.backward()
            return loss.detach()

    elif method == "enumeration":

        def step() -> torch.Tensor:
            return muscle_loss_enumerate(anchor, scaled, log_alpha).mean()

    else:
        raise SystemExit(f"unknown method {method!r}; expected one of {METHODS + ['enumeration']}")
    return step


def median_ms(step: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``repeats`` calls after one warm-up call; also the last value."""
    value = step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, value


def repeats_for(method: str, b: int, m: int, quick: bool) -> int:
    heavy = method in ("broadcast", "bare_lse", "enumeration") and b ** (m + 1) >= 2**24
    if method == "enumeration" or heavy:
        return 1 if quick else 3
    return 3 if quick else 15


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def run_one(method: str, b: int, m: int, threads: int) -> None:
    """Child process: peak RSS growth of one forward+backward of ``method`` at (B, M).

    ru_maxrss alone is not usable here: Linux carries the parent's high-water mark into a
    forked-and-exec'd child (and torch's import peak masks small workloads), so the child
    resets its own high-water mark after setup and reads VmHWM − VmRSS-at-baseline. Where
    /proc is unavailable it falls back to ru_maxrss deltas.
    """
    torch.set_num_threads(threads)
    make_step(method, 4, m, seed=1)()  # initialize kernels, autograd engine, allocator
    step = make_step(method, b, m)
    if _reset_peak_rss() and (baseline := _status_mb("VmRSS")) is not None:
        step()
        peak = _status_mb("VmHWM") - baseline
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - baseline
    print(json.dumps({"peak_mb": peak}))


def peak_mb(method: str, b: int, m: int, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, str(b), str(m), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ),  # the package comes from the installed environment
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch threads (default 2; use 1 on a busy box)",
    )
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "B", "M"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, b, m = args.one
        run_one(method, int(b), int(m), args.threads)
        return

    torch.set_num_threads(args.threads)
    print(
        f"# bench_loss: torch {torch.__version__}, {platform.processor() or platform.machine()},"
        f" {args.threads} threads, d={DIM}, float32 inputs, tau={TAU}, tau'={TAU_PRIME}"
        f"{' (quick)' if args.quick else ''}"
    )
    print(f"# load average at start: {os.getloadavg()[0]:.2f} (other processes distort timings)")
    header = f"{'config':<10} {'method':<12} {'chunk':>5} {'median ms':>11} {'peak MB':>9} {'x fact.':>8}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, int, int], tuple[float, float]] = {}
    for b, m in CONFIGS:
        values = {}
        for method in METHODS:
            ms, values[method] = median_ms(
                make_step(method, b, m), repeats_for(method, b, m, args.quick)
            )
            mb = peak_mb(method, b, m, args.threads)
            results[(method, b, m)] = (ms, mb)
            chunk = broadcast_chunk(b, m) if method == "broadcast" else None
            ratio = ms / results[("factorized", b, m)][0]
            print(
                f"B={b:<3} M={m:<2} {method:<12} {chunk or '-':>5} {ms:>11.2f} {mb:>9.1f}"
                f" {ratio:>8.2f}",
                flush=True,
            )
        diff = abs(values["factorized"].item() - values["broadcast"].item())
        print(f"{'':<10} |factorized - broadcast| mean loss = {diff:.2e}")

    b, m = ENUM_CONFIG
    for method in ("factorized", "enumeration"):
        ms, _ = median_ms(make_step(method, b, m), repeats_for(method, b, m, args.quick))
        results[(method, b, m)] = (ms, peak_mb(method, b, m, args.threads))
        ratio = ms / results[("factorized", b, m)][0]
        print(
            f"B={b:<3} M={m:<2} {method:<12} {'-':>5} {ms:>11.2f} "
            f"{results[(method, b, m)][1]:>9.1f} {ratio:>8.2f}"
        )
    print("(enumeration: forward only; factorized: forward + backward)")

    print("\nratios (time, same process)")
    for b, m in CONFIGS:
        fact = results[("factorized", b, m)][0]
        print(
            f"  B={b:<3} M={m}: broadcast/factorized = "
            f"{results[('broadcast', b, m)][0] / fact:8.1f}x   bare_lse/factorized = "
            f"{results[('bare_lse', b, m)][0] / fact:8.1f}x"
        )
    b, m = ENUM_CONFIG
    print(
        f"  B={b:<3} M={m}: enumeration/factorized = "
        f"{results[('enumeration', b, m)][0] / results[('factorized', b, m)][0]:8.1f}x"
    )
    small, large = results[("factorized", 64, 3)][1], results[("factorized", 128, 3)][1]
    scaling = large / small if small > 0 else float("nan")
    print(
        f"  factorized peak memory at M=3, B=64 -> 128: {small:.1f} MB -> {large:.1f} MB"
        f" = {scaling:.1f}x (O(B^3) predicts 8x, O(B^4) 16x)"
    )
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
