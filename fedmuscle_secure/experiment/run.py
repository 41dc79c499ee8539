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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmuscle_secure.config import ExperimentConfig, dump_config
from fedmuscle_secure.console.progress import NORMAL, QUIET
from fedmuscle_secure.console.rounds import RunProgress
from fedmuscle_secure.data import FederatedSplit
from fedmuscle_secure.errors import ConfigError, RunInterrupted
from fedmuscle_secure.experiment.environment import software_environment
from fedmuscle_secure.experiment.rounds import RoundRecorder, metric_row
from fedmuscle_secure.experiment.rundir import FINAL, RunDir, check_start, config_digest
from fedmuscle_secure.experiment.summary import write_summary
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
    loop = _MethodRun(cfg, fed, method, RoundRecorder(run, method, cfg.checkpoint.keep),
                      display, prior_rows)
    try:
        start = loop.resume() if resume else 1
        if start is None:  # it had finished
            return loop.rows
        loop.rounds(start, stop_after)
        loop.finish()
        return loop.rows
    finally:
        fed.close()
        if own:
            display.close()


@dataclass
class _MethodRun:
    """One method's federation driven round by round, and what it records."""

    cfg: ExperimentConfig
    fed: Federation
    method: str
    records: RoundRecorder
    display: RunProgress
    prior_rows: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def _row(self, r: int | str, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return metric_row(self.cfg, self.method, r, name, self.fed.clients[name].task.metric,
                          metrics)

    def _state(self) -> dict[str, Any]:
        return {"clients": {n: c.state_dict() for n, c in self.fed.clients.items()},
                "server": self.fed.server.state_dict()}

    def resume(self) -> int | None:
        """The round to start from after the latest checkpoint (None: the method finished)."""
        ck = self.records.run.latest_checkpoint(self.method)
        if ck is None:
            return 1
        r0, state = ck
        self.rows = list(state["rows"])
        self.records.run.event("resume", method=self.method, from_round=r0)
        if state.get("finished") or r0 == FINAL:  # its closing checkpoint: nothing to redo
            self.display.resumed(self.method, self.cfg.training.rounds)
            return None
        self.display.resumed(self.method, min(int(r0), self.cfg.training.rounds))
        for name, cstate in state["clients"].items():
            self.fed.clients[name].load_state_dict(cstate)
        self.fed.server.load_state_dict(state["server"])
        return int(r0) + 1

    def rounds(self, start: int, stop_after: int | None) -> None:
        """Rounds ``start``..R, each recorded and checkpointed."""
        rounds, method, display = self.cfg.training.rounds, self.method, self.display
        for r in range(start, rounds + 1):
            t0 = time.perf_counter()

            def on_phase(p: str, r: int = r) -> None:
                display.phase(method, r, p)

            per_client = run_round(self.fed, r, on_phase=on_phase)
            self.rows += [self._row(r, name, m) for name, m in per_client.items()]
            seconds = time.perf_counter() - t0
            display.round_end(method, r, per_client, seconds)
            self.records.events(r, self.fed.server, seconds, per_client)
            self.records.checkpoint(r, self._state(), self.rows, finished=False)
            self.records.run.write_metrics(self.prior_rows + self.rows)
            if stop_after is not None and r >= stop_after and r < rounds:
                raise RunInterrupted(f"{method}: stopped after round {r} (stop_after)")

    def finish(self) -> None:
        """Every client's closing local update, its ``final`` row and the final checkpoint."""
        finals: dict[str, dict[str, float]] = {}
        clients = self.fed.clients
        for i, (name, client) in enumerate(clients.items()):
            self.display.phase(self.method, "final",
                               f"final local update {name} ({i + 1}/{len(clients)})")
            t0 = time.perf_counter()
            m = client.finish()
            m.update(bytes_sent=0.0, bytes_received=0.0, wall_time_s=time.perf_counter() - t0)
            if client.privacy is not None:
                ps = client.privacy.settings
                m.update(releases=client.privacy.releases, sigma_record=ps.sigma_record,
                         sigma_client=ps.sigma_client)
            if client.left is not None:
                m.update(left_round=client.left["round"], left_reason=client.left["reason"])
            self.rows.append(self._row("final", name, m))
            finals[name] = m
        self.display.final(self.method, finals)
        self.records.checkpoint(FINAL, self._state(), self.rows, finished=True)


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False,
                   progress: bool | RunProgress = True,
                   stop_after: int | None = None) -> RunResult:
    """Run every method of ``cfg`` into ``out`` and write the summary (Δ over local, §2.4).

    ``progress``: True shows one bar over every method's rounds on a terminal and one line
    per round elsewhere (stdout); False nothing; or the :class:`RunProgress` to report to.
    A new run that fails its configuration checks before its first checkpoint (the split,
    the federation) leaves no run directory behind.
    """
    run = RunDir(out)
    resolved = dump_config(cfg)
    check_start(run, resolved, resume)
    existed = run.root.is_dir()
    try:
        rows = _run_methods(cfg, run, resolved, resume=resume, progress=progress,
                            stop_after=stop_after)
    except ConfigError:
        if not resume:
            run.remove_unstarted(existed=existed)
        raise
    final = {m: {r["client"]: float(r["test_metric"]) for r in rows
                 if r["method"] == m and r["round"] == "final"} for m in methods_of(cfg)}
    write_summary(run.summary, cfg, rows)
    run.event("run_end", final=final)
    return RunResult(run.root, final, rows)


def _run_methods(cfg: ExperimentConfig, run: RunDir, resolved: str, *, resume: bool,
                 progress: bool | RunProgress, stop_after: int | None) -> list[dict[str, Any]]:
    """Start (or resume) the run directory, then every method in turn; their metric rows."""
    run.start(resolved)
    split = make_split(cfg)
    env = software_environment()
    run.event("run_start" if not resume else "run_resume", seed=cfg.seed,
              config_sha256=config_digest(resolved), split=split.summary(),
              environment=env)
    run.record_environment(env)
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
    return rows


__all__ = ["RunResult", "methods_of", "run_experiment", "run_method"]
