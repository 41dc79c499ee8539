"""The finished cells of a ``compare`` run, as the report and the paired statistics read
them (DESIGN §2.4, §7): per cell its axes and per-client final metric, traffic and ε; per
setting (method, protection, dp, exchange) its cells over seeds, their local references and
their Δ against them.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmuscle_secure.compare.runner import MARKER
from fedmuscle_secure.experiment.rundir import RunDir


def as_float(v: Any) -> float | None:
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], digits: int = 2) -> str:
    m, s = mean_std(xs)
    return "–" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


@dataclass
class CellResult:
    """One finished cell: its axes and per-client final metrics, traffic and ε."""

    meta: dict[str, Any]
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    environment: dict[str, Any] | None = None  # the first recorded (environment.json)

    @property
    def id(self) -> str:
        return self.meta["id"]

    def setting(self) -> tuple[str, str, str, str]:
        m = self.meta
        return (m["method"], m["protection"], m["dp"], m["exchange"])


def _client_stats(rows: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = out.setdefault(r["client"], {"model": r["model"], "task": r["task"], "metric": r["metric"],
                                         "sent": [], "recv": [], "time": [], "eps_record": None,
                                         "eps_client": None, "test_metric": None})
        if r["round"] == "final":
            c["test_metric"] = as_float(r["test_metric"])
        else:
            c["sent"].append(as_float(r["bytes_sent"]) or 0.0)
            c["recv"].append(as_float(r["bytes_received"]) or 0.0)
            c["time"].append(as_float(r["wall_time_s"]) or 0.0)
        for k in ("eps_record", "eps_client"):  # the last reported value (final row last)
            if as_float(r.get(k)) is not None:
                c[k] = as_float(r[k])
    for c in out.values():
        n = max(len(c["sent"]), 1)
        c["mb_sent"] = sum(c.pop("sent")) / n / 1e6
        c["mb_recv"] = sum(c.pop("recv")) / n / 1e6
        c["compute_s"] = sum(c.pop("time")) / n
    return out


def load_cells(out: str | Path) -> dict[str, CellResult]:
    """Every cell under ``OUT/cells`` whose marker says done."""
    cells: dict[str, CellResult] = {}
    for d in sorted((Path(out) / "cells").glob("*")):
        p = d / MARKER
        if not p.is_file():
            continue
        meta = json.loads(p.read_text())
        if meta.get("status") != "done" or not (d / "metrics.csv").is_file():
            continue
        with open(d / "metrics.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["method"] == meta["method"]]
        envs = RunDir(d).environments()
        cells[meta["id"]] = CellResult(meta, _client_stats(rows), envs[0] if envs else None)
    return cells


def reference_of(cell: CellResult, cells: dict[str, CellResult]) -> CellResult | None:
    return cell if cell.meta["method"] == "local" else cells.get(cell.meta.get("ref") or "")


def cell_delta(cell: CellResult, ref: CellResult) -> dict[str, Any]:
    """Δ(%) (mean relative gain), mean gain in points, per client, against ``ref``."""
    rel, gain, per = [], [], {}
    for name, c in cell.clients.items():
        me, lo = c["test_metric"], ref.clients.get(name, {}).get("test_metric")
        if me is None or lo is None:
            continue
        g = 100.0 * (me - lo)
        r = 100.0 * (me - lo) / lo if lo > 0 else float("nan")
        per[name] = (me, lo, g, r)
        gain.append(g)
        rel.append(r)
    return {"delta_pct": statistics.fmean(rel) if rel else float("nan"),
            "gain_points": statistics.fmean(gain) if gain else float("nan"), "per_client": per}


@dataclass
class Setting:
    """One (method, protection, dp, exchange) over its seeds."""

    key: tuple[str, str, str, str]
    cells: list[CellResult]
    refs: list[CellResult]
    deltas: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return "/".join(k for k in self.key if k not in ("-",))

    def eps(self, kind: str) -> list[float]:
        """Per seed, the largest ε of any client (the guarantee every client gets)."""
        out = []
        for c in self.cells:
            vals = [v[kind] for v in c.clients.values() if v[kind] is not None]
            if vals:
                out.append(max(vals))
        return out

    def client_values(self, name: str, local: bool = False) -> list[float]:
        src = self.refs if local else self.cells
        return [100.0 * c.clients[name]["test_metric"] for c in src
                if name in c.clients and c.clients[name]["test_metric"] is not None]


def settings(cells: dict[str, CellResult], order: list[str] | None = None) -> list[Setting]:
    """Cells grouped by setting, in ``order`` (cell ids, grid order) or sorted."""
    ids = [i for i in (order or sorted(cells)) if i in cells]
    groups: dict[tuple[str, str, str, str], Setting] = {}
    for cid in ids:
        cell = cells[cid]
        s = groups.setdefault(cell.setting(), Setting(cell.setting(), [], [], []))
        ref = reference_of(cell, cells)
        s.cells.append(cell)
        if ref is not None:
            s.refs.append(ref)
            s.deltas.append(cell_delta(cell, ref))
    return list(groups.values())
