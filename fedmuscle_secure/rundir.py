"""The run directory of CONVENTIONS: resolved config, events, metrics, checkpoints.

Everything is written so that a crash loses nothing already reported: events are appended
and fsync'd, metrics and checkpoints are written to a temporary file and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from fedmuscle_secure.errors import CheckpointError

METRIC_COLUMNS = [
    "method", "round", "client", "model", "task", "metric", "test_metric", "val_metric",
    "task_loss", "cl_loss", "cl_steps", "bytes_sent", "bytes_received", "wall_time_s",
    "eps_record", "eps_client", "sigma_record", "sigma_client", "releases", "left_round", "left_reason",
    "secagg_aborted", "clipped_values",
]
KEEP_CHECKPOINTS = 2


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.resolved.yaml"
        self.events = self.root / "events.jsonl"
        self.metrics = self.root / "metrics.csv"
        self.summary = self.root / "summary.md"
        self.checkpoints = self.root / "checkpoints"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": time.time(), "event": kind, **fields}, default=str)
        with open(self.events, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write(self.metrics, buf.getvalue().encode())

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_dir(self, method: str) -> Path:
        return self.checkpoints / method

    def save_checkpoint(self, method: str, r: int, state: dict[str, Any]) -> Path:
        d = self.checkpoint_dir(method)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"round-{r:04d}.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(path, buf.getvalue())
        for old in sorted(d.glob("round-*.pt"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def latest_checkpoint(self, method: str) -> tuple[int, dict[str, Any]] | None:
        paths = sorted(self.checkpoint_dir(method).glob("round-*.pt"))
        if not paths:
            return None
        return int(paths[-1].stem.split("-")[1]), self._load(paths[-1])

    def checkpoint(self, method: str, r: int) -> dict[str, Any] | None:
        """The checkpoint of round ``r`` (None when it is not, or no longer, kept)."""
        path = self.checkpoint_dir(method) / f"round-{r:04d}.pt"
        return self._load(path) if path.is_file() else None

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            # Our own file, written by save_checkpoint; weights_only refuses arbitrary objects.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint, named
            raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); delete it to fall "
                                  "back to the previous one") from None
