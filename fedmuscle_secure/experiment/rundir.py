"""The run directory (DESIGN §11.1): resolved config, events, metrics, checkpoints.

Everything is written so that a crash loses nothing already reported: events are appended
and fsync'd, metrics and checkpoints are written to a temporary file and renamed.
Checkpoints are ``checkpoints/<method>/round-NNNN.pt`` (the state at the end of round NNNN)
and ``final.pt`` (the finished run); ``checkpoint.keep`` of them are kept per method.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fedmuscle_secure.durable import fsync_dir, write_atomic
from fedmuscle_secure.errors import CheckpointError, ConfigError

METRIC_COLUMNS = [
    "method", "round", "client", "model", "task", "metric", "test_metric", "val_metric",
    "task_loss", "cl_loss", "cl_steps", "bytes_sent", "bytes_received", "wall_time_s",
    "eps_record", "eps_client", "sigma_record", "sigma_client", "releases", "left_round", "left_reason",
    "secagg_aborted", "clipped_values",
]
FINAL = "final"
"""The label of the checkpoint written when a method's run finished (``final.pt``)."""


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.resolved.yaml"
        self.events = self.root / "events.jsonl"
        self.metrics = self.root / "metrics.csv"
        self.summary = self.root / "summary.md"
        self.checkpoints = self.root / "checkpoints"
        self.run_id = self.root / "run_id"
        self.environment = self.root / "environment.json"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def start(self, resolved: str) -> None:
        """Create the directory and record the resolved config it runs (a resume rewrites
        the same text: :func:`check_start` compared it first)."""
        self.create()
        self.config.write_text(resolved)

    def has_checkpoints(self) -> bool:
        """Whether any round of any method was checkpointed here (the run really started)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.rglob("*.pt"))

    def remove_unstarted(self, *, existed: bool) -> None:
        """Undo a start that failed before its first checkpoint: nothing is left that
        ``--resume`` or a new start would trip over. A directory the operator made
        (``existed``, and empty: :func:`check_start`) is kept, emptied. Once any ledger
        records more than its genesis (a release, a refusal), the directory stays as it
        is: what a ledger says left the organisation is never deleted."""
        if self.has_checkpoints() or not self.root.is_dir() or self._ledgers_used():
            return
        shutil.rmtree(self.root)
        if existed:
            self.root.mkdir()

    def _ledgers_used(self) -> bool:
        """Whether a ledger under ``ledger/`` holds an entry after its genesis."""
        for path in (self.root / "ledger").glob("*.jsonl"):
            with open(path, "rb") as fh:
                if sum(1 for line in fh if line.strip()) > 1:
                    return True
        return False

    def event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": time.time(), "event": kind, **fields}, default=str)
        with open(self.events, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def record_environment(self, env: dict[str, Any]) -> None:
        """Append ``env`` (versions, CPU capability: experiment/environment.py) to
        ``environment.json``, one entry per start or resume of the run, so a run resumed on
        another machine says so."""
        entries = self.environments()
        entries.append({"time": time.time(), **env})
        write_atomic(self.environment, (json.dumps(entries, indent=1) + "\n").encode())

    def environments(self) -> list[dict[str, Any]]:
        """The recorded entries (empty for a run that recorded none)."""
        try:
            data = json.loads(self.environment.read_text())
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_atomic(self.metrics, buf.getvalue().encode())

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_dir(self, method: str) -> Path:
        return self.checkpoints / method

    def save_checkpoint(self, method: str, r: int | str, state: dict[str, Any], *,
                        keep: int = 1) -> Path:
        """Write the checkpoint of round ``r`` (``FINAL``: the finished run) atomically, then
        delete all but the ``keep`` newest. The new file is renamed into place and the folder
        fsync'd before anything is deleted, so a crash at any point leaves at least one."""
        d = self.checkpoint_dir(method)
        d.mkdir(parents=True, exist_ok=True)
        path = d / _checkpoint_name(r)
        buf = io.BytesIO()
        torch.save(state, buf)
        write_atomic(path, buf.getvalue())
        fsync_dir(d)
        self.prune_checkpoints(method, keep)
        return path

    def checkpoint_labels(self, method: str) -> list[int | str]:
        """The rounds kept for ``method``, oldest first (``FINAL`` last)."""
        labels: list[int | str] = []
        for p in self.checkpoint_dir(method).glob("*.pt"):
            if p.name == _checkpoint_name(FINAL):
                continue
            if p.stem.startswith("round-") and p.stem[6:].isdigit():
                labels.append(int(p.stem[6:]))
        labels.sort()
        if (self.checkpoint_dir(method) / _checkpoint_name(FINAL)).is_file():
            labels.append(FINAL)
        return labels

    def prune_checkpoints(self, method: str, keep: int, *, before: int | None = None) -> None:
        """Delete all but the ``keep`` newest checkpoints of ``method``; with ``before``, only
        those of rounds before it (the ones a restarted peer can no longer ask for)."""
        labels = self.checkpoint_labels(method)
        for label in labels[:max(0, len(labels) - keep)]:
            if before is None or (isinstance(label, int) and label < before):
                (self.checkpoint_dir(method) / _checkpoint_name(label)).unlink(missing_ok=True)

    def latest_checkpoint(self, method: str) -> tuple[int | str, dict[str, Any]] | None:
        """The newest checkpoint of ``method`` and its round (``FINAL``), or None."""
        labels = self.checkpoint_labels(method)
        if not labels:
            return None
        return labels[-1], self._load(self.checkpoint_dir(method) / _checkpoint_name(labels[-1]))

    def checkpoint(self, method: str, r: int) -> dict[str, Any] | None:
        """The checkpoint of round ``r`` (None when it is not, or no longer, kept)."""
        path = self.checkpoint_dir(method) / _checkpoint_name(r)
        return self._load(path) if path.is_file() else None

    def delete_checkpoints(self) -> int:
        """Remove every checkpoint of this run (it finished; its records stay); returns the
        bytes freed."""
        if not self.checkpoints.is_dir():
            return 0
        freed = sum(p.stat().st_size for p in self.checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(self.checkpoints)
        return freed

    # -- federation run id (deployment) ----------------------------------------------
    def read_run_id(self) -> str | None:
        """The federation run id recorded here (``run_id``), or None."""
        if not self.run_id.is_file():
            return None
        return self.run_id.read_text().strip() or None

    def write_run_id(self, run_id: str) -> None:
        write_atomic(self.run_id, (run_id + "\n").encode())

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            # Our own file, written by save_checkpoint; weights_only refuses arbitrary objects.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint, named
            raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); delete it to fall "
                                  "back to the previous one") from None


def _checkpoint_name(r: int | str) -> str:
    return "final.pt" if r == FINAL else f"round-{int(r):04d}.pt"


def results_config(text: str) -> str:
    """A resolved config (``dump_config``'s YAML) without its operational ``checkpoint``
    section, which changes no result: resumes and ``compare``'s cell markers compare this,
    so a run resumed with another ``checkpoint.keep`` (or older than it) is the same run.
    A null ``data.text`` is dropped too, as :func:`~fedmuscle_secure.config.dump_config`
    drops it, so a config that spelled it out matches one that does not."""
    raw = yaml.safe_load(text)
    if isinstance(raw, dict):
        raw.pop("checkpoint", None)
        data = raw.get("data")
        if isinstance(data, dict) and "text" in data and data["text"] is None:
            data.pop("text")  # an unset text section reads as absent, as dump_config writes it
    return yaml.safe_dump(raw, sort_keys=False)


def config_differences(recorded: str, resolved: str) -> list[str]:
    """The dotted keys in which two resolved configs differ, ``checkpoint`` aside (what
    :func:`results_config` compares); empty when a resume may go on."""
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        if isinstance(node, list):
            out = {f"{prefix}length": len(node)}
            for k, v in enumerate(node):
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): node}

    def differences(old: str) -> list[str]:
        a = flat(yaml.safe_load(results_config(old)) or {})
        b = flat(yaml.safe_load(results_config(resolved)) or {})
        return sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object()))

    keys = differences(recorded)
    if keys and (today := resolved_today(recorded)) is not None:
        keys = differences(today)
    return keys


def resolved_today(recorded: str) -> str | None:
    """A recorded resolved config read again under today's schema (None if it no longer
    reads): a setting added since then takes its default, which is what the recorded run
    did, so a run (or a finished ``compare`` cell) stays the same run across a release
    that adds a setting. A setting whose meaning changed must change its name."""
    from fedmuscle_secure.config import dump_config, parse_config

    try:
        return dump_config(parse_config(yaml.safe_load(recorded), source="recorded config"))
    except (ConfigError, yaml.YAMLError, TypeError, ValueError):
        return None


def config_digest(text: str, length: int = 16) -> str:
    """The hex SHA-256 prefix that names a resolved config in events and markers."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class StartWording:
    """How a command names a run directory it refuses: its flags and what to type instead.
    Without one (a library call) the refusal is a :class:`CheckpointError`."""

    config_flag: str = "CONFIG"
    held_hint: str = "pass --resume to continue it or choose another --out"
    empty_hint: str = ""


def check_start(run: RunDir, resolved: str, resume: bool,
                wording: StartWording | None = None) -> None:
    """The one check before a run directory is written: ``resume`` needs a run of this very
    config there (``checkpoint`` aside), a new run an empty or missing directory. Every
    starter calls it (``run`` before it builds data and models, so a usage error costs
    nothing; the library and the gRPC server before they write)."""
    if resume and not run.config.is_file():
        what = f"{run.root}: nothing to resume (no config.resolved.yaml)"
        hint = f"; {wording.empty_hint}" if wording is not None and wording.empty_hint else ""
        raise (CheckpointError(what) if wording is None else ConfigError("--out", what + hint))
    if resume and (keys := config_differences(run.config.read_text(), resolved)):
        if wording is None:
            raise CheckpointError(f"{run.config}: the config {differs_message(run.config, keys)}")
        raise ConfigError(wording.config_flag, differs_message(run.config, keys))
    if not resume and run.root.is_dir() and any(run.root.iterdir()):
        held = f"{run.root} already holds a run; "
        if wording is None:
            raise CheckpointError(held + StartWording.held_hint)
        raise ConfigError("--out", held + wording.held_hint)


def differs_message(path: Path, keys: list[str]) -> str:
    """``differs from the config PATH was started with (keys: ...)``, at most six keys."""
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    return (f"differs from the config {path} was started with (in {shown}); resume with the "
            "same config")
