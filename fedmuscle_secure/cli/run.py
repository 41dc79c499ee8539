"""``fedmuscle-secure run``: one experiment in the in-process simulator (DESIGN §7)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmuscle_secure.cli.args import non_negative_int, positive_int, writable_dir
from fedmuscle_secure.config import ExperimentConfig, dump_config, parse_overrides
from fedmuscle_secure.console.progress import (
    DETAIL,
    add_verbosity_options,
    configure_logging,
    verbosity_of,
)
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import (
    RunDir,
    StartWording,
    check_start,
    config_differences,
)

if TYPE_CHECKING:
    from fedmuscle_secure.console.rounds import RunProgress

__all__ = ["DEFAULT_CONFIG", "add_run_parser", "cmd_run", "latest_run"]

DEFAULT_CONFIG = Path("configs") / "digits.yaml"
#: How ``run`` names a run directory it refuses (before it builds data and models).
RUN_WORDING = StartWording(empty_hint="drop --resume to start a run there")


def _default_config() -> Path:
    """``configs/digits.yaml`` in the working directory, else the one beside the package."""
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return Path(__file__).resolve().parent.parent.parent / DEFAULT_CONFIG


def latest_run(cfg: ExperimentConfig) -> Path | None:
    """The newest ``runs/<name>-seed<seed>-*`` started with this very config (another
    config whose name shares the prefix, ``digits-dp`` for ``digits``, is not one)."""
    resolved = dump_config(cfg)
    runs = [p for p in Path("runs").glob(f"{cfg.name}-seed{cfg.seed}-*")
            if (p / "config.resolved.yaml").is_file()
            and not config_differences((p / "config.resolved.yaml").read_text(), resolved)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the experiment; a run directory that does not fit ``--resume`` is refused before
    the data and models are built."""
    level = verbosity_of(args.quiet, args.verbose)
    if level >= DETAIL:  # the library's own INFO/DEBUG records, on stderr; set up before
        configure_logging(level)  # the run loop imports opacus, which claims a bare root logger
    # deferred: torch and the run loop take seconds to import, which --help and the other
    # subcommands should not pay
    import torch

    from fedmuscle_secure.experiment.run import run_experiment
    from fedmuscle_secure.experiment.summary import client_table, comparisons
    from fedmuscle_secure.federation.checks import load_config, with_overrides

    cfg = load_config(args.config or _default_config())
    overrides = parse_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if overrides:
        cfg = with_overrides(cfg, overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out
    if out is None and args.resume:
        out = latest_run(cfg)
        if out is None:
            raise ConfigError("--resume", f"no run of this config ({cfg.name!r}, seed {cfg.seed}) "
                                          "under runs/ to resume; pass --out")
    if out is None:
        out = Path("runs") / f"{cfg.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = writable_dir(out, "--out")  # also what an interruption says to resume
    check_start(RunDir(out), dump_config(cfg), args.resume, RUN_WORDING)
    t0 = time.perf_counter()
    result = run_experiment(cfg, out, resume=args.resume, progress=_run_display(cfg, args, level))
    print(f"\nRun directory: {result.run_dir}  ({time.perf_counter() - t0:.0f} s)\n")
    cmps = comparisons(cfg, result.rows)
    for cmp in cmps:
        print(client_table(cmp))
    if not cmps:
        for method, per in result.final.items():
            print(method, {c: round(100 * v, 2) for c, v in per.items()})
    return 0


def _run_display(cfg: ExperimentConfig, args: argparse.Namespace, level: int) -> RunProgress:
    """``run``'s progress on stdout at verbosity ``level`` (--quiet/-v); --no-progress:
    plain lines even on a terminal (no bar)."""
    # deferred with the run loop (cmd_run)
    from fedmuscle_secure.console.rounds import RunProgress
    from fedmuscle_secure.experiment.run import methods_of

    return RunProgress(cfg, methods_of(cfg), verbosity=level,
                       bar=False if args.no_progress else None)


def add_run_parser(subparsers: Any) -> None:
    """Register ``run`` on the CLI's subparsers."""
    r = subparsers.add_parser(
        "run", help="run one experiment (FedMuscle and its local-training reference)",
        description="Run an experiment config in the in-process simulator. Trains the configured "
                    "method and the local-only reference on the same splits and seeds, writes the "
                    "run directory (config.resolved.yaml, events.jsonl, metrics.csv, checkpoints/, "
                    "summary.md) and prints per-client metrics and Δ over local training. Under "
                    "DP the local reference is an out-of-budget reference: a second model trained "
                    "on the same private shards, with its own ε and in no ledger (summary.md "
                    "says so); `compare_local: false` leaves it out, and the deployment "
                    "(server/client) never runs it. Without DP, --resume ends with exactly an "
                    "uninterrupted run's metrics; with DP, the noise differs from run to run and "
                    "the interrupted round's privacy cost is counted again.")
    r.add_argument("config", nargs="?", type=Path,
                   help=f"YAML config (default: {DEFAULT_CONFIG})")
    r.add_argument("--out", type=Path, default=None,
                   help="run directory (default: runs/<name>-seed<seed>-<timestamp>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the newest runs/<name>-*) from its "
                        "last checkpoint")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config setting, validated like the file: a dotted path "
                        "and a YAML value, e.g. --set training.rounds=3 --set "
                        "clients.0.model=resnet18 (repeatable; recorded in config.resolved.yaml)")
    r.add_argument("--seed", type=non_negative_int, default=None,
                   help="override the config's experiment seed")
    r.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads, >= 1 (default: torch's)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bar: plain lines (one per round) even on a terminal, as "
                        "when stdout is a file or a pipe")
    add_verbosity_options(r)
    r.set_defaults(func=cmd_run)
