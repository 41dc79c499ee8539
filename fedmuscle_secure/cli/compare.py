"""``fedmuscle-secure compare GRID.yaml``: run a grid of experiments and write the report."""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
from pathlib import Path

from fedmuscle_secure.cli.args import positive_int, writable_dir
from fedmuscle_secure.config import parse_overrides
from fedmuscle_secure.errors import ConfigError


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compare", help="run a grid of experiments (methods × protection × DP × exchange × seeds) "
                        "and write comparison tables and plots",
        description="Expand a grid file into cells (one experiment each, plus one local-training "
                    "reference per seed and DP-SGD setting; with DP-SGD each is an out-of-budget "
                    "reference, a second model on the same private shards whose ε is in no "
                    "federated cell's ledger, and the report says so), run the cells not yet "
                    "finished in "
                    "parallel worker processes into OUT/cells/<cell-id>/ (an interrupted cell is "
                    "resumed, a finished one skipped), then write OUT/results.csv, "
                    "OUT/results.md (per-client mean ± std over seeds, Δ(%), mean gain, "
                    "wins/losses vs local, communication, wall time, ε) and PNG plots. "
                    "Exit 1 if any cell failed, 2 on a bad grid.")
    c.add_argument("grid", type=Path, help="grid YAML file (see configs/compare-*.yaml)")
    c.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<grid name>/)")
    c.add_argument("--jobs", type=positive_int, default=None,
                   help="cells run at once (default: max(1, CPU cores // 2))")
    c.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per cell, >= 1 (default: max(1, CPU cores // jobs))")
    c.add_argument("--cells", action="append", default=None, metavar="PATTERN",
                   help="run only the cells whose id matches this glob (repeatable); the report "
                        "still covers every finished cell")
    c.add_argument("--skip-invalid", action="store_true",
                   help="run the valid cells when some cells' configs are invalid (they are listed)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of the grid's base config, validated like the "
                        "file (as `run --set`): a dotted path and a YAML value, e.g. --set "
                        "training.rounds=3; applied before the grid's overrides and axes "
                        "(repeatable; recorded in each cell's config.resolved.yaml)")
    c.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    c.add_argument("--report-only", action="store_true",
                   help="run nothing; regenerate the report from the finished cells in OUT")
    c.add_argument("--publish", type=Path, default=None, metavar="DIR",
                   help="copy results.csv, results.md, the PNGs and each finished cell's record "
                        "(DIR/cells/<id>/: cell.json, metrics.csv, config.resolved.yaml; not its "
                        "checkpoints, ledgers or keys) into DIR; `--report-only --out DIR` "
                        "regenerates the tables from it")
    c.add_argument("--import", dest="imports", type=Path, action="append", default=None,
                   metavar="DIR",
                   help="before running, take finished cells from DIR/cells (another OUT or a "
                        "--publish DIR, e.g. from another machine) for the cells not finished "
                        "in OUT; only records of this grid's cell with the same config are "
                        "taken (repeatable)")
    c.add_argument("--json", action="store_true", help="print a machine-readable summary")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compare)


#: What a finished cell's record is: enough to rebuild the report (marker + metrics) and to
#: see exactly what ran (the resolved config) and where (versions and CPU capability).
RECORD_FILES = ("cell.json", "metrics.csv", "config.resolved.yaml", "environment.json")


def _done(cell_dir: Path) -> dict | None:
    from fedmuscle_secure.compare.runner import read_marker

    m = read_marker(cell_dir)
    ok = m and m.get("status") == "done" and (cell_dir / "metrics.csv").is_file()
    return m if ok else None


def _copy_record(src: Path, dst: Path) -> None:
    """Copy a finished cell's record files from ``src`` into a new directory ``dst``."""
    dst.mkdir(parents=True)
    for name in RECORD_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def publish(out: Path, dest: Path) -> list[str]:
    """Copy the report and every finished cell's record from ``out`` into ``dest``; the
    records there are replaced, so ``dest`` holds exactly what the report was made from."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in [out / "results.csv", out / "paired.csv", out / "results.md",
              *sorted(out.glob("*.png"))]:
        if p.is_file():
            shutil.copy2(p, dest / p.name)
            copied.append(str(dest / p.name))
    if (dest / "cells").resolve() == (out / "cells").resolve():
        return copied
    shutil.rmtree(dest / "cells", ignore_errors=True)
    for d in sorted((out / "cells").glob("*")):
        if _done(d):
            _copy_record(d, dest / "cells" / d.name)
            copied.append(str(dest / "cells" / d.name))
    return copied


def import_cells(cells: list, out: Path, sources: list[Path]) -> list[str]:
    """Copy finished cell records from ``sources`` into ``out`` for the cells of ``cells``
    not finished there; a record is taken only if its config is this grid's cell's."""
    from fedmuscle_secure.compare.runner import same_config

    taken = []
    for src in sources:
        if not (src / "cells").is_dir():
            raise ConfigError("--import", f"{src} has no cells/ directory (expected a compare "
                                          "OUT or a --publish DIR)")
        for c in cells:
            here, there = out / "cells" / c.id, src / "cells" / c.id
            m = _done(there)
            if c.id in taken or _done(here) or not m or not same_config(m, c, there):
                continue
            shutil.rmtree(here, ignore_errors=True)
            _copy_record(there, here)
            taken.append(c.id)
    return taken


def cmd_compare(args: argparse.Namespace) -> int:
    from fedmuscle_secure.compare.grid import expand_file
    from fedmuscle_secure.compare.report import write_report
    from fedmuscle_secure.compare.runner import default_jobs, run_cells, threads_for

    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", f"must be at least 1, got {args.jobs}")
    exp = expand_file(args.grid, allow_invalid=args.skip_invalid,
                      overrides=parse_overrides(args.set))
    out = args.out or Path("runs") / exp.spec.name
    if not args.dry_run:
        args.out = writable_dir(out, "--out")
        if args.publish:
            writable_dir(args.publish, "--publish")
    cells = exp.cells
    if args.cells:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in args.cells)]
        if not cells:
            raise ConfigError("--cells", f"no cell id matches {args.cells}")
    jobs = args.jobs or default_jobs()
    threads = args.threads or threads_for(jobs)
    info: dict = {"grid": str(args.grid), "out": str(out), "cells": [c.meta() for c in cells],
                  "invalid": [{"id": i, "error": e} for i, e in exp.invalid]}
    if args.dry_run:
        _print_plan(args, info, exp, cells, out, jobs, threads)
        return 0
    failed: dict[str, str] = {}
    if args.imports:
        info["imported"] = import_cells(cells, out, args.imports)
        if not args.json:
            print(f"imported {len(info['imported'])} finished cell(s) from "
                  f"{', '.join(map(str, args.imports))}")
    if not args.report_only:
        summary = run_cells(cells, out, jobs=jobs, threads=threads,
                            progress=not args.no_progress and not args.json)
        failed = summary.failed
        info.update(summary.as_dict())
    else:
        out.mkdir(parents=True, exist_ok=True)
    report = write_report(out, exp.spec.name, order=[c.id for c in exp.cells],
                          expected=[c.id for c in exp.cells], refused=exp.invalid)
    info["report"] = report
    if args.publish:
        info["published"] = publish(out, args.publish)
    _print_outcome(args, info, cells, report, failed)
    return 1 if failed else 0


def _print_plan(args: argparse.Namespace, info: dict, exp, cells: list, out: Path, jobs: int,
                threads: int) -> None:
    """``--dry-run``: the cells that would run, where, and the grid's invalid ones."""
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{len(cells)} cell(s) of {exp.spec.name} into {out}/cells "
          f"(jobs {jobs}, {threads} torch thread(s) each):")
    for c in cells:
        print(f"  {c.id}" + (f"    Δ vs {c.ref}" if c.ref else ""))
    for i, e in exp.invalid:
        print(f"  INVALID {i}: {e}")


def _print_outcome(args: argparse.Namespace, info: dict, cells: list, report: dict,
                   failed: dict[str, str]) -> None:
    """The report's files, unfinished and failed cells (or all of it as JSON)."""
    if args.json:
        info["cells"] = [c.id for c in cells]
        print(json.dumps(info, indent=2, default=str))
        return
    print(f"{report['cells']} finished cell(s); report: {report['markdown']}, {report['csv']}")
    if report["missing"]:
        print(f"not finished: {len(report['missing'])} cell(s)")
    for cid, err in failed.items():
        print(f"FAILED {cid}: {err}")
    if args.publish:
        print(f"published to {args.publish}")
