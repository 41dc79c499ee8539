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
import math
import re
from pathlib import Path
from typing import Any

from fedmuscle_secure.compare.cells import (
    CellResult,
    Setting,
    as_float,
    cell_delta,
    load_cells,
    mean_std,
    pm,
    reference_of,
    settings,
)
from fedmuscle_secure.compare.paired import (
    Interval,
    paired_comparisons,
    t_interval,
    verdict_section,
    write_paired_csv,
)
from fedmuscle_secure.experiment.environment import environment_differences

CSV_COLUMNS = [
    "cell", "method", "protection", "dp", "exchange", "seed", "client", "model", "task", "metric",
    "test_metric", "local_metric", "gain_points", "rel_pct", "mb_sent_per_round",
    "mb_received_per_round", "compute_s_per_round", "cell_wall_time_s", "eps_record",
    "eps_client", "ref_cell", "setting_delta_ci95_low", "setting_delta_ci95_high",
    "client_gain_ci95_low", "client_gain_ci95_high",
]


def setting_intervals(s: Setting) -> dict[str, Interval]:
    """The t-intervals over seeds of a setting's Δ against local (key ``""``) and of each
    client's gain in points against its local reference (key: the client)."""
    out = {"": t_interval([d["delta_pct"] for d in s.deltas])} if s.deltas else {}
    for name in (s.cells[0].clients if s.deltas else {}):
        gains = [d["per_client"][name][2] for d in s.deltas if name in d["per_client"]]
        if gains:
            out[name] = t_interval(gains)
    return out


def results_rows(cells: dict[str, CellResult], sets: list[Setting]) -> list[dict[str, Any]]:
    """One row per cell × client; the interval columns are over the seeds of its setting."""
    intervals = {s.key: setting_intervals(s) for s in sets if s.key[0] != "local"}
    rows = []
    for cell in cells.values():
        ci = intervals.get(cell.setting(), {})
        nan = Interval(math.nan, math.nan, math.nan)
        ref = reference_of(cell, cells)
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
                         "ref_cell": cell.meta.get("ref") or "",
                         "setting_delta_ci95_low": ci.get("", nan).low,
                         "setting_delta_ci95_high": ci.get("", nan).high,
                         "client_gain_ci95_low": ci.get(name, nan).low,
                         "client_gain_ci95_high": ci.get(name, nan).high})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    path.write_text(buf.getvalue())


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
                     + pm([as_float(c.meta.get("wall_time_s")) for c in s.cells], 1) + " |")
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


def environment_note(cells: list[CellResult]) -> str:
    """Where the cells ran (DESIGN §11): one environment, or what differs between them, since
    the same config and seed give other numbers on another CPU instruction set or library
    version."""
    envs = [c.environment for c in cells if c.environment]
    if not envs:
        return ""
    first, unknown = envs[0], len(cells) - len(envs)
    diffs = sorted({d for e in envs[1:] for d in environment_differences(first, e)})
    pk = first.get("packages", {})
    where = (f"CPU capability {first.get('cpu_capability')}, {first.get('torch_threads')} torch "
             f"thread(s), torch {pk.get('torch')}, timm {pk.get('timm')}, numpy {pk.get('numpy')}")
    text = (f"**Environment.** All {len(envs)} recorded cells ran with {where}." if not diffs
            else f"**Environment.** The cells ran in more than one environment ({where} for "
            f"the first; differing: {'; '.join(diffs)}). The same config and seed give other "
            "numbers on another CPU instruction set or library version, so paired differences "
            "between cells of different environments include that effect.")
    return text + (f" {unknown} cell(s) recorded no environment." if unknown else "")


def table_groups(sets: list[Setting]) -> dict[tuple[str, str, str], list[Setting]]:
    out: dict[tuple[str, str, str], list[Setting]] = {}
    for s in sets:
        if s.key[0] != "local" and s.refs:
            out.setdefault(s.key[1:], []).append(s)
    return out


def refused_table(refused: list[tuple[str, str]]) -> list[str]:
    """Method × setting of the grid's refused cells (``--skip-invalid``) with the reason the
    config check gave, one row per setting (its seeds collapsed)."""
    if not refused:
        return []
    rows: dict[tuple[str, ...], tuple[list[str], str]] = {}
    for cell_id, error in refused:
        *setting, seed = cell_id.split("__")
        why = re.sub(r"^grids\.\d+: ", "", error.strip().splitlines()[0])
        seeds, first = rows.setdefault(tuple(setting), ([], why))
        seeds.append(seed.removeprefix("s"))
    out = ["## Refused: where a method's assumptions do not hold", "",
           "These cells were not run: the config check refused them (`compare --skip-invalid`).",
           "", "| method | protection | dp | exchange | seeds | why |", "|---|---|---|---|---|---|"]
    for setting, (seeds, why) in rows.items():
        cols = (list(setting) + ["", "", "", ""])[:4]
        out.append(f"| {' | '.join(f'`{c}`' for c in cols)} | {len(seeds)} | "
                   f"{why.replace('|', '/')} |")
    return out + [""]


def markdown(name: str, sets: list[Setting], n_cells: int, missing: list[str],
             plots: list[str], verdicts: list[str],
             refused: list[tuple[str, str]] | None = None) -> str:
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
    parts += verdicts
    groups = table_groups(sets)
    for (prot, dp, exch), group in groups.items():
        if len(groups) > 1:
            parts += [f"## protection `{prot}`, dp `{dp}`, exchange `{exch}`", ""]
        parts += [poster_table(group), ""]
    parts += refused_table(refused or [])
    parts += ["## Communication and wall time per mode", "",
              ("Per round, averaged over clients and seeds; the cell wall time is the whole cell "
              "(its last run only, if it was resumed)."), "", comm_table(sets), ""]
    parts += ["## Privacy: ε per setting", "",
              ("The largest ε of any client (δ from the config), mean ± std over seeds; "
              "∞ means that mechanism is off."), "", eps_table(sets), "",
              *[line + "\n" for line in smallest_positive_eps(sets)]]
    if note := local_reference_note(sets):
        parts += [note, ""]
    if env := environment_note([c for s in sets for c in s.cells]):
        parts += [env, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def write_report(out: str | Path, name: str, order: list[str] | None = None,
                 expected: list[str] | None = None,
                 refused: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Write results.csv, results.md and the PNGs into ``out`` from ``out/cells``;
    ``refused``: the grid's invalid cells (id, why), listed in results.md."""
    from fedmuscle_secure.compare.plots import write_plots

    out = Path(out)
    cells = load_cells(out)
    missing = [c for c in (expected or []) if c not in cells]
    sets = settings(cells, order)
    write_csv(out / "results.csv", results_rows(cells, sets))
    comparisons = paired_comparisons(sets)
    write_paired_csv(out / "paired.csv", comparisons)
    plots = write_plots(out, sets, table_groups(sets)) if cells else []
    (out / "results.md").write_text(markdown(name, sets, len(cells), missing, plots,
                                             verdict_section(comparisons), refused))
    return {"csv": str(out / "results.csv"), "paired": str(out / "paired.csv"),
            "markdown": str(out / "results.md"),
            "plots": [str(out / p) for p in plots], "cells": len(cells), "missing": missing}
