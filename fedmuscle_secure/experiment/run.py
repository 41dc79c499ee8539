"""``run``: one experiment end to end (DESIGN §7) — FedMuscle and its local reference.

Both methods run on the same splits, model initialisations and seeds; the run directory
gets a checkpoint after every round, so ``--resume`` continues where a crash stopped.
Without DP it ends with exactly the metrics of an uninterrupted run. With DP it cannot (the
noise comes from the OS's CSPRNG, so no two DP runs repeat), and the accounting is
conservative: the ledger keeps what the interrupted round released or spent and its replay
is counted again, so ε ends at or above an uninterrupted run's.

The ``local`` reference (``compare_local``) trains a second model on the same private shards
with no ledger; under DP it is an out-of-budget reference, and ``summary.md`` says so with
its own ε. The deployment never runs it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmuscle_secure.config import ExperimentConfig, dump_config
from fedmuscle_secure.console.progress import NORMAL, QUIET
from fedmuscle_secure.console.rounds import RunProgress
from fedmuscle_secure.data import FederatedSplit
from fedmuscle_secure.errors import CheckpointError, RunInterrupted
from fedmuscle_secure.experiment.rundir import FINAL, RunDir, config_differences, differs_message
from fedmuscle_secure.experiment.summary import client_table, write_summary
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.simulator import Federation, build_federation, run_round


@dataclass(frozen=True)
class RunResult:
    """What ``run_experiment`` returns: the run directory and final metrics per method."""

    run_dir: Path
    final: dict[str, dict[str, float]]       # method -> client -> final test metric
    rows: list[dict[str, Any]]


def methods_of(cfg: ExperimentConfig) -> list[str]:
    m = cfg.muscle.method
    return [m, "local"] if cfg.compare_local and m != "local" else [m]


def _row(method: str, r: int | str, cfg: ExperimentConfig, name: str, fed: Federation,
         metrics: dict[str, float]) -> dict[str, Any]:
    client = fed.clients[name]
    spec = next(c for c in cfg.clients if c.name == name)
    return {"method": method, "round": r, "client": name, "model": spec.model, "task": spec.task,
            "metric": client.task.metric, **metrics}


def _display(cfg: ExperimentConfig, methods: list[str],
             progress: bool | RunProgress) -> tuple[RunProgress, bool]:
    """(the display to report to, whether this caller made it and closes it): ``progress``
    True shows the progress on stdout (a bar on a terminal, plain lines elsewhere), False
    nothing."""
    if isinstance(progress, RunProgress):
        return progress, False
    return RunProgress(cfg, methods, verbosity=NORMAL if progress else QUIET), True


def run_method(cfg: ExperimentConfig, split: FederatedSplit, method: str, run: RunDir, *,
               resume: bool, progress: bool | RunProgress, prior_rows: list[dict[str, Any]],
               stop_after: int | None = None) -> list[dict[str, Any]]:
    """Rounds 1..R of one method, checkpointing each; returns its metric rows.

    ``metrics.csv`` is rewritten after every round with ``prior_rows`` (earlier methods)
    and this method's rows so far. ``stop_after`` raises :class:`RunInterrupted` after that
    round, as a crash would (used to test ``--resume``).
    """
    main = methods_of(cfg)[0]
    display, own = _display(cfg, [method], progress)
    fed = build_federation(cfg, split, method, record_dir=run.root if method == main else None)
    try:
        return _run_rounds(cfg, fed, method, run, resume=resume, display=display,
                           prior_rows=prior_rows, stop_after=stop_after)
    finally:
        fed.close()
        if own:
            display.close()


def _run_rounds(cfg: ExperimentConfig, fed: Federation, method: str, run: RunDir, *, resume: bool,
                display: RunProgress, prior_rows: list[dict[str, Any]],
                stop_after: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start = 1
    if resume and (ck := run.latest_checkpoint(method)) is not None:
        r0, state = ck
        rows = list(state["rows"])
        run.event("resume", method=method, from_round=r0)
        display.resumed(method, min(r0, cfg.training.rounds))
        if state.get("finished"):
            return rows
        for name, cstate in state["clients"].items():
            fed.clients[name].load_state_dict(cstate)
        fed.server.load_state_dict(state["server"])
        start = int(r0) + 1
    rounds = cfg.training.rounds
    for r in range(start, rounds + 1):
        t0 = time.perf_counter()

        def on_phase(p: str, r: int = r) -> None:
            display.phase(method, r, p)

        per_client = run_round(fed, r, on_phase=on_phase)
        for name, m in per_client.items():
            rows.append(_row(method, r, cfg, name, fed, m))
        seconds = time.perf_counter() - t0
        display.round_end(method, r, per_client, seconds)
        run.event("round_end", method=method, round=r, seconds=seconds,
                  selection=fed.server.last_selection, metrics=per_client)
        for d in fed.server.departures:
            if d["round"] == r:
                run.event("client_left", method=method, **d)
        for e in fed.server.sat_out:
            if e["round"] == r:
                run.event("exchange_sat_out", method=method, **e)
        if fed.server.settings.secure is not None:
            for e in fed.server.settings.secure.events:
                if e["round"] == r:
                    run.event(e["event"], method=method, **{k: v for k, v in e.items() if k != "event"})
        _checkpoint(run, method, r, fed, rows, finished=False, keep=cfg.checkpoint.keep)
        run.write_metrics(prior_rows + rows)
        if stop_after is not None and r >= stop_after and r < rounds:
            raise RunInterrupted(f"{method}: stopped after round {r} (stop_after)")
    finals: dict[str, dict[str, float]] = {}
    for i, (name, client) in enumerate(fed.clients.items()):
        display.phase(method, "final", f"final local update {name} ({i + 1}/{len(fed.clients)})")
        t0 = time.perf_counter()
        m = client.finish()
        m.update(bytes_sent=0.0, bytes_received=0.0, wall_time_s=time.perf_counter() - t0)
        if client.privacy is not None:
            ps = client.privacy.settings
            m.update(releases=client.privacy.releases, sigma_record=ps.dpsgd_sigma,
                     sigma_client=ps.representation_sigma)
        if client.left is not None:
            m.update(left_round=client.left["round"], left_reason=client.left["reason"])
        rows.append(_row(method, "final", cfg, name, fed, m))
        finals[name] = m
    display.final(method, finals)
    _checkpoint(run, method, FINAL, fed, rows, finished=True, keep=cfg.checkpoint.keep)
    return rows


def _checkpoint(run: RunDir, method: str, r: int | str, fed: Federation,
                rows: list[dict[str, Any]], finished: bool, keep: int) -> None:
    state = {"clients": {n: c.state_dict() for n, c in fed.clients.items()},
             "server": fed.server.state_dict(), "rows": rows, "finished": finished}
    run.save_checkpoint(method, r, state, keep=keep)


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False,
                   progress: bool | RunProgress = True,
                   stop_after: int | None = None) -> RunResult:
    """Run every method of ``cfg`` into ``out`` and write the summary (Δ over local, §2.4).

    ``progress``: True shows one bar over every method's rounds on a terminal and one line
    per round elsewhere (stdout); False nothing; or the :class:`RunProgress` to report to.
    """
    run = RunDir(out)
    resolved = dump_config(cfg)
    if resume:
        if not run.config.is_file():
            raise CheckpointError(f"{run.root}: nothing to resume (no config.resolved.yaml)")
        if keys := config_differences(run.config.read_text(), resolved):
            raise CheckpointError(f"{run.config}: the config {differs_message(run.config, keys)}")
    elif run.root.exists() and any(run.root.iterdir()):
        raise CheckpointError(f"{run.root} already holds a run; pass --resume to continue it or "
                              "choose another --out")
    run.create()
    run.config.write_text(resolved)
    split = make_split(cfg)
    run.event("run_start" if not resume else "run_resume", seed=cfg.seed,
              config_sha256=config_digest(resolved), split=split.summary(),
              torch=torch.__version__, numpy=np.__version__, torch_threads=torch.get_num_threads())
    rows: list[dict[str, Any]] = []
    display, own = _display(cfg, methods_of(cfg), progress)
    try:
        display.started(run.root, resume=resume)
        for method in methods_of(cfg):
            rows = [r for r in rows if r["method"] != method]
            rows += run_method(cfg, split, method, run, resume=resume, progress=display,
                               prior_rows=rows, stop_after=stop_after)
            run.write_metrics(rows)
    finally:
        if own:
            display.close()
    final = {m: {r["client"]: float(r["test_metric"]) for r in rows
                 if r["method"] == m and r["round"] == "final"} for m in methods_of(cfg)}
    write_summary(run.summary, cfg, rows)
    run.event("run_end", final=final)
    return RunResult(run.root, final, rows)


__all__ = ["RunResult", "client_table", "run_experiment"]
