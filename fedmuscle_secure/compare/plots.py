"""PNG plots of a ``compare`` report (matplotlib, Agg backend, no display needed).

* ``delta_vs_eps.png``: Δ (%) against ε, record-level and client-level points; settings
  without DP are drawn at the right edge, labelled ε = ∞.
* ``per_client__<setting>.png``: per-client grouped bars per method (mean ± std over seeds).
* ``communication.png``: MB per client per round and cell wall time per mode.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedmuscle_secure.compare.cells import Setting, mean_std


def _slug(parts: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "__".join(parts))


def _delta(s: Setting) -> tuple[float, float]:
    return mean_std([d["delta_pct"] for d in s.deltas])


def delta_vs_eps(path: Path, sets: list[Setting]) -> bool:
    pts: list[tuple[str, str, float, float, float]] = []   # kind, label, eps, Δ, std
    for s in sets:
        if s.key[0] == "local" or not s.deltas:
            continue
        d, sd = _delta(s)
        rec, cli = mean_std(s.eps("eps_record"))[0], mean_std(s.eps("eps_client"))[0]
        if not math.isnan(cli) and cli > 0:
            pts.append(("client-level", s.label, cli, d, sd))
        if not math.isnan(rec) and rec > 0:
            pts.append(("record-level", s.label, rec, d, sd))
        if not (cli > 0 or rec > 0):
            pts.append(("no DP", s.label, math.inf, d, sd))
    if not pts:
        return False
    finite = [p[2] for p in pts if math.isfinite(p[2])]
    lo, hi = (min(finite), max(finite)) if finite else (1.0, 10.0)
    inf_x = hi * 4 if finite else 10.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"record-level": "o", "client-level": "s", "no DP": "^"}
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for kind, label, eps, d, sd in pts:
        method_prot = "/".join(label.split("/")[:2])
        series.setdefault((kind, method_prot), []).append((inf_x if math.isinf(eps) else eps, d, sd))
    for (kind, mp), xs in series.items():
        xs.sort()
        ax.errorbar([x for x, _, _ in xs], [y for _, y, _ in xs], yerr=[e for _, _, e in xs],
                    marker=markers[kind], capsize=3, linestyle="-" if len(xs) > 1 else "none",
                    label=f"{mp} ({kind})")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo / 2, inf_x * 2)
    ticks: list[float] = []
    for t in sorted(set(finite)):   # labelled ticks at the ε run, none crowding another
        if not ticks or t > ticks[-1] * 1.3:
            ticks.append(t)
    ax.minorticks_off()
    ax.set_xticks(ticks + [inf_x])
    ax.set_xticklabels([f"{t:.3g}" for t in ticks] + ["∞\n(no DP)"])
    ax.set_xlabel("ε (δ from the config; largest over clients)")
    ax.set_ylabel("Δ over local training (%)")
    ax.set_title("Δ against ε")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def per_client_bars(path: Path, group: list[Setting], title: str) -> None:
    methods = [s for s in group if s.key[0] != "local"]
    clients = list(methods[0].cells[0].clients)
    refs = {r.id: r for s in methods for r in s.refs}
    local = Setting(("local", "plain", "", "-"), list(refs.values()), list(refs.values()), [])
    cols = methods + [local]
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(clients) * len(cols) * 0.4 + 3), 4.5))
    for j, s in enumerate(cols):
        stats = [mean_std(s.client_values(c)) for c in clients]
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(clients))]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[e for _, e in stats], capsize=2,
               label=s.key[0])
    ax.set_xticks(range(len(clients)))
    ax.set_xticklabels(clients)
    ax.set_ylabel("final test metric (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def communication(path: Path, sets: list[Setting]) -> None:
    labels, sent, recv, wall, wall_sd = [], [], [], [], []
    for s in sets:
        per = [c for cell in s.cells for c in cell.clients.values()]
        labels.append(s.label)
        sent.append(mean_std([c["mb_sent"] for c in per])[0])
        recv.append(mean_std([c["mb_recv"] for c in per])[0])
        w = mean_std([c.meta.get("wall_time_s") for c in s.cells])
        wall.append(w[0])
        wall_sd.append(w[1])
    xs = list(range(len(labels)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(labels) + 4), 4.5))
    a1.bar([x - 0.2 for x in xs], sent, 0.4, label="sent")
    a1.bar([x + 0.2 for x in xs], recv, 0.4, label="received")
    a1.set_ylabel("MB per client per round")
    a1.legend(fontsize=7)
    a2.bar(xs, wall, 0.6, yerr=wall_sd, capsize=2)
    a2.set_ylabel("cell wall time (s)")
    for a in (a1, a2):
        a.set_xticks(xs)
        a.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(out: Path, sets: list[Setting],
                groups: dict[tuple[str, str, str], list[Setting]]) -> list[str]:
    """Write every plot into ``out``; returns their file names."""
    names: list[str] = []
    if delta_vs_eps(out / "delta_vs_eps.png", sets):
        names.append("delta_vs_eps.png")
    for key, group in groups.items():
        name = f"per_client__{_slug(key)}.png"
        per_client_bars(out / name, group, f"protection {key[0]}, dp {key[1]}, exchange {key[2]}")
        names.append(name)
    communication(out / "communication.png", sets)
    names.append("communication.png")
    return names


__all__: list[Any] = ["write_plots"]
