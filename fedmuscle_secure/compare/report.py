"""The ``compare`` report, regenerated from the finished cells alone (DESIGN §2.4, §7).

``results.csv``: one row per cell × client. ``results.md``: poster-style tables (rows =
clients, columns = methods, cells mean ± std over seeds in percent) with Δ(%), the mean
absolute gain in points and wins/losses against local training, one table per
(protection, dp, exchange) setting; then communication and wall time per mode and ε per
setting. Each cell's Δ is against the local cell named in its ``ref`` (same seed, same
DP-SGD settings). Standard deviations are sample standard deviations over seeds (0 for one
seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmuscle_secure.compare.runner import MARKER

CSV_COLUMNS = [
    "cell", "method", "protection", "dp", "exchange", "seed", "client", "model", "task", "metric",
    "test_metric", "local_metric", "gain_points", "rel_pct", "mb_sent_per_round",
    "mb_received_per_round", "compute_s_per_round", "cell_wall_time_s", "eps_record",
    "eps_client", "ref_cell",
]


def _f(v: Any) -> float | None:
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
            c["test_metric"] = _f(r["test_metric"])
        else:
            c["sent"].append(_f(r["bytes_sent"]) or 0.0)
            c["recv"].append(_f(r["bytes_received"]) or 0.0)
            c["time"].append(_f(r["wall_time_s"]) or 0.0)
        for k in ("eps_record", "eps_client"):  # the last reported value (final row last)
            if _f(r.get(k)) is not None:
                c[k] = _f(r[k])
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
        cells[meta["id"]] = CellResult(meta, _client_stats(rows))
    return cells


def _ref(cell: CellResult, cells: dict[str, CellResult]) -> CellResult | None:
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


def results_rows(cells: dict[str, CellResult]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells.values():
        ref = _ref(cell, cells)
        d = cell_delta(cell, ref) if ref else {"per_client": {}}
        for name, c in cell.clients.items():
            me, lo, g, r = d["per_client"].get(name, (c["test_metric"], None, None, None))
            rows.append({"cell": cell.id, **{k: cell.meta[k] for k in
                         ("method", "protection", "dp", "exchange", "seed")},
                         "client": name, "model": c["model"], "task": c["task"],
                         "metric": c["metric"], "test_metric": me, "local_metric": lo,
                         "gain_points": g, "rel_pct": r, "mb_sent_per_round": c["mb_sent"],
                         "mb_received_per_round": c["mb_recv"], "compute_s_per_round": c["compute_s"],
                         "cell_wall_time_s": cell.meta.get("wall_time_s"),
                         "eps_record": c["eps_record"], "eps_client": c["eps_client"],
                         "ref_cell": cell.meta.get("ref") or ""})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    path.write_text(buf.getvalue())


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
        ref = _ref(cell, cells)
        s.cells.append(cell)
        if ref is not None:
            s.refs.append(ref)
            s.deltas.append(cell_delta(cell, ref))
    return list(groups.values())


def poster_table(group: list[Setting]) -> str:
    """Rows = clients; columns = the group's methods and local; Δ, gain, wins/losses rows."""
    methods = [s for s in group if s.key[0] != "local"]
    first = group[0].cells[0]
    clients = list(first.clients)
    refs = {r.id: r for s in methods for r in s.refs}
    local = Setting(("local", "plain", "", "-"), list(refs.values()), list(refs.values()), [])
    cols = [s.key[0] for s in methods] + ["local"]
    lines = ["| client | model | task | metric | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---:|" * len(cols)]
    for name in clients:
        c = first.clients[name]
        vals = [pm(s.client_values(name)) for s in methods] + [pm(local.client_values(name))]
        lines.append(f"| {name} | {c['model']} | {c['task']} | {c['metric']} | "
                     + " | ".join(vals) + " |")
    blank = "| | | | "
    lines.append(blank + "**Δ (%) ↑** | " + " | ".join(
        [f"**{pm([d['delta_pct'] for d in s.deltas])}**" for s in methods] + ["0.00"]) + " |")
    lines.append(blank + "mean gain (points) | " + " | ".join(
        [pm([d["gain_points"] for d in s.deltas]) for s in methods] + ["0.00"]) + " |")
    lines.append(blank + "wins/losses vs local | " + " | ".join(
        [wins_losses(s, clients) for s in methods] + ["–"]) + " |")
    return "\n".join(lines)


def wins_losses(s: Setting, clients: list[str]) -> str:
    """Per client, the mean over seeds of the method against that of its local references."""
    w = lo = 0
    for name in clients:
        me, ref = mean_std(s.client_values(name))[0], mean_std(s.client_values(name, local=True))[0]
        if math.isnan(me) or math.isnan(ref):
            continue
        w += me > ref
        lo += me < ref
    return f"{w}/{lo}"


def comm_table(sets: list[Setting]) -> str:
    lines = [("| method | protection | dp | exchange | MB sent / client / round | "
             "MB received / client / round | client compute s / round | cell wall time s |"),
             "|---|---|---|---|---:|---:|---:|---:|"]
    for s in sets:
        per = [c for cell in s.cells for c in cell.clients.values()]
        lines.append("| " + " | ".join(s.key) + " | "
                     + f"{mean_std([c['mb_sent'] for c in per])[0]:.3f} | "
                     + f"{mean_std([c['mb_recv'] for c in per])[0]:.3f} | "
                     + f"{mean_std([c['compute_s'] for c in per])[0]:.2f} | "
                     + pm([_f(c.meta.get("wall_time_s")) for c in s.cells], 1) + " |")
    return "\n".join(lines)


def _eps_text(xs: list[float]) -> str:
    if not xs or max(xs) <= 0:
        return "∞ (off)"
    return pm(xs, 3)


def eps_table(sets: list[Setting]) -> str:
    lines = ["| method | protection | dp | exchange | ε record-level | ε client-level | Δ (%) |",
             "|---|---|---|---|---:|---:|---:|"]
    for s in sets:
        delta = "0.00" if s.key[0] == "local" else pm([d["delta_pct"] for d in s.deltas])
        lines.append("| " + " | ".join(s.key) + f" | {_eps_text(s.eps('eps_record'))} | "
                     f"{_eps_text(s.eps('eps_client'))} | {delta} |")
    return "\n".join(lines)


def positive_from(points: list[tuple[float, float, str]]) -> tuple[float, str] | None:
    """(ε, label) of the smallest ε from which Δ stays positive: Δ > 0 there and at every
    larger ε of ``points`` (ε, mean Δ, label); None when Δ ≤ 0 at the largest ε. A positive
    Δ at some small ε below a non-positive one is not "staying positive": on noisy
    benchmarks it is more likely a seed effect than privacy that pays."""
    best = None
    for eps, d, label in sorted(points, key=lambda p: (-p[0], p[2])):
        if d <= 0:
            break
        best = (eps, label)
    return best


def smallest_positive_eps(sets: list[Setting]) -> list[str]:
    """Per guarantee, the smallest ε at which Δ (mean over seeds) stays positive (DESIGN §5.1)."""
    lines = []
    for kind, label in (("eps_record", "record-level"), ("eps_client", "client-level")):
        pts = []
        for s in sets:
            eps = s.eps(kind)
            if s.key[0] != "local" and s.deltas and eps and max(eps) > 0:
                pts.append((mean_std(eps)[0], mean_std([d["delta_pct"] for d in s.deltas])[0],
                            s.label))
        if not pts:
            continue
        ok = positive_from(pts)
        lines.append(f"Smallest {label} ε from which Δ stays positive (Δ > 0 there and at every "
                     "larger ε run): "
                     + (f"{ok[0]:.3g} (`{ok[1]}`)." if ok else
                        "none (Δ ≤ 0 at the largest ε run)."))
    return lines


def local_reference_note(sets: list[Setting]) -> str:
    """The ``local`` cells with DP-SGD are out-of-budget references: a second model trained
    on the same private shards as the federated cells compared with them, whose ε no
    federated cell's ledger holds. Empty when no local cell spends ε."""
    spent = [(s.key[2], max(s.eps("eps_record"))) for s in sets
             if s.key[0] == "local" and s.eps("eps_record") and max(s.eps("eps_record")) > 0]
    if not spent:
        return ""
    levels = ", ".join(f"dp `{dp}`: up to {eps:.3f}" for dp, eps in spent)
    return ("**`local` cells are out-of-budget references.** Each trains a second model with "
            "DP-SGD on the same private shards as the federated cells compared with it, at "
            f"its own record-level ε ({levels}). That ε is recorded only in the local cell's "
            "own ledger, in no federated cell's; the same records were used by both, so "
            "together they are bounded only by the sum of the two ε (at twice δ, basic "
            "composition), not by either. A deployment never runs the local reference.")


def table_groups(sets: list[Setting]) -> dict[tuple[str, str, str], list[Setting]]:
    out: dict[tuple[str, str, str], list[Setting]] = {}
    for s in sets:
        if s.key[0] != "local" and s.refs:
            out.setdefault(s.key[1:], []).append(s)
    return out


def markdown(name: str, sets: list[Setting], n_cells: int, missing: list[str],
             plots: list[str]) -> str:
    seeds = sorted({c.meta["seed"] for s in sets for c in s.cells})
    parts = [f"# Comparison: {name}", "",
             (f"{n_cells} finished cells, seeds {seeds}. Cells: final test metric (%) per client, "
             "mean ± std (sample std) over seeds. Δ (%) = mean over clients of "
             "100·(metric − local)/local, computed per seed against the local cell with the "
             "same seed and DP-SGD settings; mean gain = mean over clients of the difference in "
             "points; wins/losses compare per-client means over seeds (DESIGN §2.4)."), ""]
    if missing:
        parts += [f"**Incomplete:** {len(missing)} cell(s) have not finished: "
                  + ", ".join(f"`{m}`" for m in missing), ""]
    groups = table_groups(sets)
    for (prot, dp, exch), group in groups.items():
        if len(groups) > 1:
            parts += [f"## protection `{prot}`, dp `{dp}`, exchange `{exch}`", ""]
        parts += [poster_table(group), ""]
    parts += ["## Communication and wall time per mode", "",
              ("Per round, averaged over clients and seeds; the cell wall time is the whole cell "
              "(its last run only, if it was resumed)."), "", comm_table(sets), ""]
    parts += ["## Privacy: ε per setting", "",
              ("The largest ε of any client (δ from the config), mean ± std over seeds; "
              "∞ means that mechanism is off."), "", eps_table(sets), "",
              *[line + "\n" for line in smallest_positive_eps(sets)]]
    if note := local_reference_note(sets):
        parts += [note, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def write_report(out: str | Path, name: str, order: list[str] | None = None,
                 expected: list[str] | None = None) -> dict[str, Any]:
    """Write results.csv, results.md and the PNGs into ``out`` from ``out/cells``."""
    from fedmuscle_secure.compare.plots import write_plots

    out = Path(out)
    cells = load_cells(out)
    missing = [c for c in (expected or []) if c not in cells]
    write_csv(out / "results.csv", results_rows(cells))
    sets = settings(cells, order)
    plots = write_plots(out, sets, table_groups(sets)) if cells else []
    (out / "results.md").write_text(markdown(name, sets, len(cells), missing, plots))
    return {"csv": str(out / "results.csv"), "markdown": str(out / "results.md"),
            "plots": [str(out / p) for p in plots], "cells": len(cells), "missing": missing}
