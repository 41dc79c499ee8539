"""Parallel, resumable execution of a ``compare`` grid's cells.

Each cell runs in a worker process (``spawn``) through :func:`run_experiment` into
``OUT/cells/<cell-id>/``. ``cell.json`` with ``status: done`` is written only after the run
finished: such a cell is skipped on a re-run. A cell directory without the marker is
resumed from its last checkpoint (or restarted when it holds no config); once done, its
checkpoints are deleted (its record stays: config, metrics, events, summary, ledgers). A
failing cell is recorded (``cell.json`` with ``status: failed`` and the error) and the
others go on; it is retried on the next run. Every start, skip, finish and failure is appended to
``OUT/compare.jsonl``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmuscle_secure.compare.grid import Cell
from fedmuscle_secure.config import dump_config
from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.experiment.rundir import (
    RunDir,
    config_differences,
    config_digest,
    results_config,
)

MARKER = "cell.json"
THREADS_PER_CELL = 2


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    return max(1, cpu_count() // THREADS_PER_CELL)


def threads_for(jobs: int) -> int:
    return max(1, cpu_count() // max(1, jobs))


def same_config(marker: dict[str, Any], cell: Cell, cell_dir: Path) -> bool:
    """Whether a cell's marker was written for exactly this cell's config (its results part:
    ``checkpoint.keep`` changes nothing a marker vouches for), or for the config recorded in
    ``cell_dir`` that reads as this one under today's schema (a setting added since, at its
    default: :func:`~fedmuscle_secure.experiment.rundir.resolved_today`)."""
    text = dump_config(cell.config)
    if marker.get("config_sha256") == config_sha(text):
        return True
    try:
        recorded = (cell_dir / "config.resolved.yaml").read_text(encoding="utf-8")
    except OSError:
        return False
    return marker.get("config_sha256") == config_sha(recorded) and \
        not config_differences(recorded, text)


def config_sha(text: str) -> str:
    """Digest of a resolved config's results part (:func:`.rundir.results_config`)."""
    return config_digest(results_config(text))


def _drop_checkpoints(cell_dir: Path, cell_id: str) -> None:
    """A finished cell keeps its record (config, metrics, events, summary, ledgers, keys)
    and loses its checkpoints: every model and optimizer state of the run, the bulk of its
    disk, and of no use once the cell is done (a done cell is skipped, never resumed)."""
    freed = RunDir(cell_dir).delete_checkpoints()
    if freed:
        log_event(cell_dir.parent.parent, "cell_checkpoints_deleted", cell=cell_id, bytes=freed)


def read_marker(cell_dir: Path) -> dict[str, Any] | None:
    p = cell_dir / MARKER
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str).encode())


def log_event(out: Path, kind: str, **fields: Any) -> None:
    with open(out / "compare.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.time(), "event": kind, **fields}, default=str) + "\n")


def run_cell(meta: dict[str, Any], config_text: str, cell_dir: str, threads: int) -> dict[str, Any]:
    """Worker: run one cell (resuming an interrupted one); returns its marker. Never raises."""
    import torch
    import yaml

    from fedmuscle_secure.experiment.run import run_experiment
    from fedmuscle_secure.federation.checks import parse_config

    torch.set_num_threads(threads)
    d = Path(cell_dir)
    log_event(d.parent.parent, "cell_start", cell=meta["id"], pid=os.getpid(), threads=threads)
    t0 = time.perf_counter()
    marker = {**meta, "config_sha256": config_sha(config_text)}
    try:
        cfg = parse_config(yaml.safe_load(config_text), source=meta["id"])
        resume = (d / "config.resolved.yaml").is_file()
        if d.exists() and not resume:
            shutil.rmtree(d)                 # interrupted before its config was written
        result = run_experiment(cfg, d, resume=resume, progress=False)
        final = result.final.get(meta["method"], {})
        marker.update(status="done", resumed=resume, final=final,
                      wall_time_s=time.perf_counter() - t0)
        _write_json(d / MARKER, marker)
        _drop_checkpoints(d, meta["id"])  # only now: a done cell is never resumed again
    except Exception as exc:  # noqa: BLE001 - recorded, the other cells go on
        marker.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(), wall_time_s=time.perf_counter() - t0)
        if d.exists():
            _write_json(d / MARKER, marker)
    return marker


@dataclass
class RunSummary:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]          # cell id -> error

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed}


def pending_cells(cells: list[Cell], out: Path) -> tuple[list[Cell], list[str], dict[str, str]]:
    """Cells still to run, cells already done, and done cells whose config changed."""
    todo, skipped, stale = [], [], {}
    for c in cells:
        m = read_marker(out / "cells" / c.id)
        if m and m.get("status") == "done":
            if not same_config(m, c, out / "cells" / c.id):
                stale[c.id] = (f"finished with another config; delete {out / 'cells' / c.id} "
                               "to run it again")
            else:
                skipped.append(c.id)
        else:
            todo.append(c)
    return todo, skipped, stale


def _leave_interrupts_to_the_parent() -> None:
    """In a worker: ignore Ctrl-C (the terminal sends it to every process of the group);
    the parent stops the workers, so a cell stops without a traceback per worker. On Linux
    the worker also ends when the parent dies however it dies (``kill -9`` included): a
    worker left behind would go on computing, and writing, a cell with the code it loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _stop_workers_on_interrupt():
    """On Ctrl-C or a termination signal (``kill``) in the parent, end the workers at once
    (an interrupted cell resumes from its last checkpoint on the next run) instead of
    waiting for their cells to finish."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except KeyboardInterrupt:
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_cells(cells: list[Cell], out: str | Path, *, jobs: int | None = None,
              threads: int | None = None, progress: bool = True) -> RunSummary:
    """Run every cell not yet done, ``jobs`` at a time; failures are recorded, not raised.
    ``progress``: one line per finished cell (cells done/total, rate, ETA), with a bar below
    them when stdout is a terminal (:mod:`fedmuscle_secure.console.progress`)."""
    from fedmuscle_secure.console.progress import Progress, is_terminal

    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    jobs = jobs or default_jobs()
    threads = threads or threads_for(jobs)
    todo, skipped, failed = pending_cells(cells, out)
    for cid in skipped:
        log_event(out, "cell_skipped", cell=cid, reason="done")
        _drop_checkpoints(out / "cells" / cid, cid)  # left by a stop right after its marker
    for cid, err in failed.items():
        log_event(out, "cell_failed", cell=cid, error=err)
    summary = RunSummary(done=[], skipped=skipped, failed=dict(failed))
    if not todo:
        return summary
    bar = Progress(len(cells), label="cells", unit="cell", bar=progress and is_terminal(sys.stdout),
                   show_lines=progress)
    bar.skip(len(cells) - len(todo))
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx,
                                initializer=_leave_interrupts_to_the_parent) as pool, \
            _stop_workers_on_interrupt():
        futs = {}
        for c in todo:
            log_event(out, "cell_queued", cell=c.id, jobs=jobs, threads=threads)
            futs[pool.submit(run_cell, c.meta(), dump_config(c.config), str(out / "cells" / c.id),
                             threads)] = c
        for fut in cf.as_completed(futs):
            c = futs[fut]
            try:
                marker = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory)
                marker = {"status": "failed", "error": f"worker died: {type(exc).__name__}: {exc}"}
            if marker["status"] == "done":
                summary.done.append(c.id)
                log_event(out, "cell_done", cell=c.id, wall_time_s=marker.get("wall_time_s"),
                          resumed=marker.get("resumed"))
            else:
                summary.failed[c.id] = marker["error"]
                log_event(out, "cell_failed", cell=c.id, error=marker["error"])
            bar.advance(1)
            verdict = "done" if marker["status"] == "done" else f"failed: {marker['error']}"
            bar.line(f"cell {c.id} {verdict}  {bar.rate.done}/{len(cells)} cells  "
                     f"{bar.rate.summary('cell')}")
            bar.phase(f"{len(summary.failed)} failed" if summary.failed else "")
    bar.close()
    return summary
