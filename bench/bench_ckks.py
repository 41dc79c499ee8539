"""CKKS cost, measured side by side in one process.

Part 1 — primitives at the default config's sizes (B = 64 rows of d = 64, one
ciphertext at N = 8192): encrypt, add, the server's sum-form terms (scale + square,
rotate-and-sum), decrypt; throughput in float values per second; ciphertext expansion
over the float32 bytes of the same values.

Part 2 — one whole round of the default config (4 clients, LocalUpdate included) in plain
and in ckks, for the sum form and the exact loss, with the time spent inside the CKKS
machinery itself (encrypt, server evaluation, decrypt; instrumented). Target: ckks
sum-form round ≤ 3× plain.

    python bench/bench_ckks.py [CONFIG] [--repeats 20] [--round-repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

import torch
from _stopwatch import Stopwatch, median_seconds

from fedmuscle_secure.crypto.ckks import (
    CkksParameters,
    SecretContext,
    add,
    decrypt_matrix,
    decrypt_row_values,
    encrypt_matrix,
    encrypt_row_values,
    scale,
    sq_norm_minus,
)
from fedmuscle_secure.federation.checks import load_config, with_overrides
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.simulator import build_federation

CKKS = Stopwatch()  # encrypt, server evaluation, decrypt


def primitives(cfg, repeats: int) -> None:
    params = CkksParameters(**cfg.ckks.model_dump())
    secret = SecretContext.create(params)
    public = secret.to_public()
    b, d, m = cfg.muscle.batch_size, cfg.muscle.dim, cfg.muscle.num_selected
    g = torch.Generator().manual_seed(0)
    zs = [torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
          for _ in range(m)]
    encs = [encrypt_matrix(secret, z) for z in zs]
    qs = [encrypt_row_values(secret, (z * z).sum(1), cols=d) for z in zs]
    u = add(public, encs)
    q = add(public, qs)
    r = sq_norm_minus(public, u, q)
    rows = [
        ("encrypt Z (client)", lambda: encrypt_matrix(secret, zs[0]), b * d),
        ("encrypt q (client)", lambda: encrypt_row_values(secret, (zs[0] ** 2).sum(1), cols=d), b),
        (f"add {m} (server)", lambda: add(public, encs), m * b * d),
        ("scale by 1/τ (server)", lambda: scale(public, u, 5.0), b * d),
        ("||U||² − q (server)", lambda: sq_norm_minus(public, u, q), b * d),
        ("decrypt S (client)", lambda: decrypt_matrix(secret, encs[0]), b * d),
        ("decrypt ||U||² − q (client)", lambda: decrypt_row_values(secret, r), b),
    ]
    print(f"\n== CKKS primitives, N = {params.poly_modulus_degree}, moduli {params.coeff_mod_bit_sizes}, "
          f"scale 2^{params.global_scale_bits}, B = {b}, d = {d}, medians of {repeats} ==")
    print(f"{'operation':>28} {'ms':>8} {'values/s':>12}")
    for name, fn, values in rows:
        t = median_seconds(fn, repeats)
        print(f"{name:>28} {1e3 * t:>8.2f} {values / t:>12.3g}")
    nbytes = encs[0].nbytes
    print(f"ciphertext of Z: {nbytes} bytes for {b * d * 4} float32 bytes: expansion "
          f"{nbytes / (b * d * 4):.1f}x; Enc(q): {qs[0].nbytes} bytes for {b * 4} ({qs[0].nbytes / (b * 4):.0f}x)")
    print(f"server's public context: {len(public.serialize()) / 1e6:.1f} MB (Galois keys "
          f"{'on' if params.galois_keys else 'off'}); clients' secret context: "
          f"{len(secret.serialize()) / 1e6:.2f} MB")


def _instrument() -> None:
    from fedmuscle_secure.client.protection.ckks import CkksClientProtection
    from fedmuscle_secure.server.protection.ckks import CkksServerProtection

    CkksClientProtection.protect = CKKS.wrap(CkksClientProtection.protect)
    CkksClientProtection.open = CKKS.wrap(CkksClientProtection.open)
    CkksServerProtection.replies = CKKS.wrap(CkksServerProtection.replies)


def round_table(cfg, repeats: int) -> None:
    _instrument()
    print(f"\n== One round of {cfg.name} ({len(cfg.clients)} clients), medians of {repeats} rounds ==")
    print(f"{'method':>11} {'plain s':>8} {'ckks s':>8} {'ckks/plain':>10} {'ckks machinery s':>16} "
          f"{'(plain+machinery)/plain':>23}")
    split = make_split(cfg)
    for method in ("muscle_sum", "muscle"):
        times = {}
        for protection in ("plain", "ckks"):
            c = with_overrides(cfg, {"muscle.method": method, "protection": protection,
                                      "training.rounds": repeats + 1})
            fed = build_federation(c, split, method)
            times[protection], times[protection + "_m"] = CKKS.median_round(fed, repeats + 1)
        mach = times["ckks_m"]
        print(f"{method:>11} {times['plain']:>7.2f}s {times['ckks']:>7.2f}s {times['ckks'] / times['plain']:>9.2f}x "
              f"{mach:>15.2f}s {(times['plain'] + mach) / times['plain']:>22.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/digits.yaml")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--round-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-round", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start "
          f"{os.getloadavg()[0]:.2f}")
    primitives(cfg, args.repeats)
    if not args.skip_round:
        round_table(cfg, args.round_repeats)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
