"""PNG plots of a ``compare`` report (matplotlib, Agg backend, no display needed).

Every error bar is a 95 % Student-t interval over seeds (not a standard deviation), and
every figure says so with its number of seeds.

* ``delta_vs_eps.png`` (only for a grid with DP): Δ (%) against ε on a log axis, one panel
  per guarantee (record-level, client-level), one series per method, protection and
  exchange; the same series without DP, where the grid has it, is drawn at the right edge
  (ε = ∞).
* ``per_client__<setting>.png``: one panel per client, its own metric on its own axis
  (accuracy and micro-F1 are not one scale), one bar per method and local.
* ``communication.png``: MB per client per round and cell wall time per setting, log axes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedFormatter, FixedLocator, LogLocator, NullFormatter

from fedmuscle_secure.compare.cells import Setting, mean_std
from fedmuscle_secure.compare.paired import t_interval

KINDS = (("eps_record", "record-level"), ("eps_client", "client-level"))


def _slug(parts: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "__".join(parts))


def _mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (0 for one value)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    ci = t_interval(xs)
    return ci.mean, (0.0 if math.isnan(ci.low) else ci.high - ci.mean)


def _seeds_note(sets: list[Setting]) -> str:
    n = sorted({len(s.cells) for s in sets if s.cells})
    seeds = str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"
    return f"error bars: 95 % t-interval over seeds (n = {seeds})"


def _eps(s: Setting, kind: str) -> float:
    return mean_std(s.eps(kind))[0]


def _eps_ticks(ax, lo: float, hi: float, inf_x: float) -> None:
    """Log ticks from ``lo`` to ``hi`` (1, 2, 5 per decade over a few decades, decades
    beyond), none between ``hi`` and the no-DP position ``inf_x``, which is labelled ∞."""
    narrow = hi / lo < 1e3
    ticks = [t for t in LogLocator(base=10, subs=(1, 2, 5) if narrow else (1,))
             .tick_values(lo / 2, hi * 1.5) if lo / 2 <= t <= hi * 1.5]
    ax.xaxis.set_major_locator(FixedLocator([*ticks, inf_x]))
    ax.xaxis.set_major_formatter(FixedFormatter(
        [f"{t:g}" if narrow else f"1e{round(math.log10(t))}" for t in ticks] + ["∞\n(no DP)"]))
    ax.xaxis.set_minor_formatter(NullFormatter())


def delta_vs_eps(path: Path, sets: list[Setting]) -> bool:
    """False (and no file) when no setting of the grid spends ε."""
    runs = [s for s in sets if s.key[0] != "local" and s.deltas]
    if not any(_eps(s, k) > 0 for s in runs for k, _ in KINDS):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (kind, title) in zip(axes, KINDS, strict=True):
        dp = [s for s in runs if _eps(s, kind) > 0]
        finite = [_eps(s, kind) for s in dp]
        series: dict[tuple[str, str, str], list[Setting]] = {}
        for s in dp:
            series.setdefault((s.key[0], s.key[1], s.key[3]), []).append(s)
        inf_x = max(finite) * 6 if finite else 10.0
        for (method, prot, ex), members in series.items():
            base = [s for s in runs if s.key == (method, prot, "none", ex)]
            pts = sorted((_eps(s, kind), *_mean_ci([d["delta_pct"] for d in s.deltas]))
                         for s in members)
            pts += [(inf_x, *_mean_ci([d["delta_pct"] for d in b.deltas])) for b in base]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, linestyle="-" if len(pts) > 1 else "none",
                        label=f"{method}, {prot}, {ex}")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{title} DP" if dp else f"{title} DP: none in this grid")
        if dp:
            ax.set_xlim(min(finite) / 2, inf_x * 2)
            _eps_ticks(ax, min(finite), max(finite), inf_x)
            ax.axvline(inf_x / 2.5, color="lightgrey", linewidth=0.8, linestyle=":")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"{title} ε (largest over clients; δ from the config), log scale")
    axes[0].set_ylabel("Δ over local training (%)")
    fig.suptitle(f"Δ against ε; {_seeds_note(runs)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def per_client_bars(path: Path, group: list[Setting], title: str) -> None:
    methods = [s for s in group if s.key[0] != "local"]
    first = methods[0].cells[0]
    clients = list(first.clients)
    refs = {r.id: r for s in methods for r in s.refs}
    local = Setting(("local", "plain", "", "-"), list(refs.values()), list(refs.values()), [])
    cols = methods + [local]
    fig, axes = plt.subplots(1, len(clients), figsize=(max(8, 3.2 * len(clients)), 4.2),
                             squeeze=False)
    for ax, name in zip(axes[0], clients, strict=True):
        stats = [_mean_ci(s.client_values(name)) for s in cols]
        ax.bar(range(len(cols)), [m for m, _ in stats], 0.7, yerr=[e for _, e in stats],
               capsize=2, color=[f"C{j}" for j in range(len(cols))])
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([s.key[0] for s in cols], rotation=60, ha="right", fontsize=7)
        c = first.clients[name]
        ax.set_title(f"{name}\n{c['model']}, {c['task']}", fontsize=8)
        ax.set_ylabel(f"final test {c['metric']} (%)", fontsize=8)
        ok = [m for m, _ in stats if not math.isnan(m)]
        if ok:
            ax.set_ylim(max(0.0, min(ok) - 15), min(100.0, max(ok) + 10))
    fig.suptitle(f"{title}; {_seeds_note(cols)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def communication(path: Path, sets: list[Setting]) -> None:
    labels, sent, recv, wall, wall_ci = [], [], [], [], []
    for s in sets:
        per = [c for cell in s.cells for c in cell.clients.values()]
        labels.append(s.label)
        sent.append(max(mean_std([c["mb_sent"] for c in per])[0], 1e-4))
        recv.append(max(mean_std([c["mb_recv"] for c in per])[0], 1e-4))
        w = _mean_ci([c.meta.get("wall_time_s") for c in s.cells])
        wall.append(w[0])
        wall_ci.append(w[1])
    xs = list(range(len(labels)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 0.5 * len(labels) + 6), 5.5))
    a1.bar([x - 0.2 for x in xs], sent, 0.4, label="sent")
    a1.bar([x + 0.2 for x in xs], recv, 0.4, label="received")
    a1.set_yscale("log")
    a1.set_ylabel("MB per client per round\n(log scale; 0 drawn at 1e-4)")
    a1.set_title("Traffic per client per round (mean over clients and seeds)", fontsize=9)
    a1.legend(fontsize=8)
    a2.bar(xs, wall, 0.6, yerr=wall_ci, capsize=2)
    a2.set_yscale("log")
    a2.set_ylabel("cell wall time (s, log scale)")
    a2.set_title(f"Wall time of a cell; {_seeds_note(sets)}", fontsize=9)
    for a in (a1, a2):
        a.set_xticks(xs)
        a.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        a.set_xlabel("method/protection/dp/exchange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(out: Path, sets: list[Setting],
                groups: dict[tuple[str, str, str], list[Setting]]) -> list[str]:
    """Write every plot into ``out``; returns their file names."""
    names: list[str] = []
    if delta_vs_eps(out / "delta_vs_eps.png", sets):
        names.append("delta_vs_eps.png")
    else:
        (out / "delta_vs_eps.png").unlink(missing_ok=True)  # from an earlier report
    for key, group in groups.items():
        name = f"per_client__{_slug(key)}.png"
        per_client_bars(out / name, group, f"protection {key[0]}, dp {key[1]}, exchange {key[2]}")
        names.append(name)
    communication(out / "communication.png", sets)
    names.append("communication.png")
    return names
