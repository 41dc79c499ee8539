"""``fedmuscle-secure``: one entry point with subcommands (DESIGN §13.6).

Exit codes (README "Exit codes"): 0 ok, 1 failure at run time, 2 bad usage or
configuration, 10-21 ``audit`` verdicts, 130 interrupted (Ctrl-C), 141 stdout closed by its
reader. :func:`main` is the one place that maps what a command raised to a code and one
line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fedmuscle_secure.cli import exits as cli_errors
from fedmuscle_secure.cli.args import OneLineParser, non_negative_int, positive_int, writable_dir
from fedmuscle_secure.console.progress import add_verbosity_options
from fedmuscle_secure.errors import ConfigError, FedMuscleError

if TYPE_CHECKING:
    from fedmuscle_secure.config import ExperimentConfig
    from fedmuscle_secure.console.rounds import RunProgress

DEFAULT_CONFIG = Path("configs") / "digits.yaml"


def _version() -> str:
    """The installed distribution's version (from its metadata, one source of truth)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmuscle-secure")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _default_config() -> Path:
    """``configs/digits.yaml`` in the working directory, else the one beside the package."""
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return Path(__file__).resolve().parent.parent / DEFAULT_CONFIG


def _latest_run(cfg: ExperimentConfig) -> Path | None:
    """The newest ``runs/<name>-seed<seed>-*`` started with this very config (another
    config whose name shares the prefix, ``digits-dp`` for ``digits``, is not one)."""
    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import config_differences

    resolved = dump_config(cfg)
    runs = [p for p in Path("runs").glob(f"{cfg.name}-seed{cfg.seed}-*")
            if (p / "config.resolved.yaml").is_file()
            and not config_differences((p / "config.resolved.yaml").read_text(), resolved)]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from fedmuscle_secure.config import parse_overrides
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
        out = _latest_run(cfg)
        if out is None:
            raise ConfigError("--resume", f"no run of this config ({cfg.name!r}, seed {cfg.seed}) "
                                          "under runs/ to resume; pass --out")
    if out is None:
        out = Path("runs") / f"{cfg.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = writable_dir(out, "--out")  # also what an interruption says to resume
    _check_run_dir(out, args.resume, cfg)
    t0 = time.perf_counter()
    result = run_experiment(cfg, out, resume=args.resume, progress=_run_display(cfg, args))
    print(f"\nRun directory: {result.run_dir}  ({time.perf_counter() - t0:.0f} s)\n")
    cmps = comparisons(cfg, result.rows)
    for cmp in cmps:
        print(client_table(cmp))
    if not cmps:
        for method, per in result.final.items():
            print(method, {c: round(100 * v, 2) for c, v in per.items()})
    return 0


def _run_display(cfg: ExperimentConfig, args: argparse.Namespace) -> RunProgress:
    """``run``'s progress on stdout at the verbosity of --quiet/-v; --no-progress: plain
    lines even on a terminal (no bar)."""
    from fedmuscle_secure.console.progress import DETAIL, configure_logging, verbosity_of
    from fedmuscle_secure.console.rounds import RunProgress
    from fedmuscle_secure.experiment.run import methods_of

    level = verbosity_of(args.quiet, args.verbose)
    if level >= DETAIL:  # the library's own INFO/DEBUG records, on stderr
        configure_logging(level)
    return RunProgress(cfg, methods_of(cfg), verbosity=level,
                       bar=False if args.no_progress else None)


def _check_run_dir(out: Path, resume: bool, cfg) -> None:
    """``--out`` fits ``--resume`` (a run of this config to continue) or not (nothing there
    yet): a usage error, said before the data and models are built."""
    from fedmuscle_secure.config import dump_config
    from fedmuscle_secure.experiment.rundir import config_differences, differs_message

    resolved = out / "config.resolved.yaml"
    if resume and not resolved.is_file():
        raise ConfigError("--out", f"{out}: nothing to resume (no config.resolved.yaml); "
                                   "drop --resume to start a run there")
    if resume and (keys := config_differences(resolved.read_text(), dump_config(cfg))):
        raise ConfigError("CONFIG", differs_message(resolved, keys))
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError("--out", f"{out} already holds a run; pass --resume to continue it "
                                   "or choose another --out")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="fedmuscle-secure",
        description="Privacy-hardened federated multi-task learning with the Muscle loss.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
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
    from fedmuscle_secure.cli.compare import add_compare_parser

    add_compare_parser(sub)
    from fedmuscle_secure.cli.audit import add_audit_parser

    add_audit_parser(sub)
    from fedmuscle_secure.cli.provision import add_provision_parser

    add_provision_parser(sub)
    from fedmuscle_secure.cli.deploy import add_deploy_parsers

    add_deploy_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command, map its outcome to an exit code (module docs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace()
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C may land here too
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as exc:
        return _fail(cli_errors.EXIT_USAGE, f"config error: {exc}")
    except FedMuscleError as exc:
        return _fail(cli_errors.EXIT_RUNTIME, f"error: {exc}")
    except KeyboardInterrupt:
        hint = cli_errors.interrupted_hint(args, argv)
        return _fail(cli_errors.EXIT_INTERRUPTED, f"interrupted; {hint}")
    except BrokenPipeError as exc:
        if not cli_errors.stdout_broken():
            return _fail(cli_errors.EXIT_RUNTIME, f"error: {cli_errors.os_error_message(exc)}")
        cli_errors.silence_stdout()  # the reader has what it wanted: stop quietly
        return cli_errors.EXIT_PIPE
    except OSError as exc:
        return _fail(cli_errors.EXIT_RUNTIME, f"error: {cli_errors.os_error_message(exc)}")


def _fail(code: int, message: str) -> int:
    """One line on stderr (``fedmuscle-secure: MESSAGE``); returns ``code``."""
    print(f"fedmuscle-secure: {cli_errors.one_line(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
