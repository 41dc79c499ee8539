"""Paired comparisons of a ``compare`` grid: the questions a reader asks, with 95 % intervals
and a verdict (DESIGN §7.2).

Cells of one grid share seeds, splits and local references, so two settings are compared
*paired by seed*: per seed s, the difference of their Δ (%) and, per client c, the
difference of their final test metrics in points, g(s, c). The seed-to-seed spread that
every setting shares (which split, which initialisation) cancels in these differences; it
does not cancel in two unpaired means ± std.

For each pair (A, B):

* ``delta``: mean over seeds of Δ_A(s) − Δ_B(s), with a t-interval over seeds (n − 1
  degrees of freedom) and the two-sided paired t-test's p-value;
* ``gain``: mean over seeds and clients of g(s, c), with a t-interval over the per-seed
  means and, beside it, a bootstrap interval that resamples seeds and clients independently
  (clients as well as seeds are a sample: another federation has other clients);
* ``verdict``: "resolved" only when the t-interval of the *primary* difference excludes 0
  (and says which side wins), otherwise "not resolved"; with fewer than two common seeds
  there is no interval. The primary difference is Δ's when A and B have the same local
  reference on every seed; when they do not (a DP level against no DP: each is against a
  local model trained with its own DP-SGD) a difference of Δs divides by two different
  denominators, so the primary difference is the per-client gain, the difference of the
  metrics themselves.
  ``holm``: the same verdict after Holm's correction over every comparison of the report,
  since a grid asks dozens of questions and about one in twenty null questions resolves at
  95 % by chance.

The questions: every method against ``local`` (B's Δ is 0 by definition; g is the gain over
the local cell of the same seed), every method against exact Muscle at the same protection,
DP level and exchange, secagg and ckks against plain at the same method, DP level and
exchange, per_batch against per_epoch at the same method, protection and DP level, and
every DP level against no DP at the same method, protection and exchange (there Δ is
against a local reference with the same DP-SGD settings, so ``gain``, the difference of
the metrics themselves, is the utility the noise costs).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from fedmuscle_secure.compare.cells import CellResult, Setting

#: Resamples of the seeds × clients bootstrap; its generator's seed (statistics, not privacy:
#: the intervals must be the same on every regeneration of a report).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95

#: The kinds of question, in the order the report lists them.
KINDS = ("vs local", "vs exact Muscle", "protection vs plain", "per_batch vs per_epoch",
         "DP vs no DP")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 2) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.{digits}f} (no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    """One paired question: A against B over their common seeds."""

    kind: str
    question: str
    a: str
    b: str
    seeds: tuple[int, ...]
    clients: tuple[str, ...]
    delta: Interval
    gain: Interval
    gain_bootstrap: Interval
    p_value: float
    primary: str = "delta"  # "delta" or "gain": the difference the verdict and p-value test
    holm: str = ""

    @property
    def tested(self) -> Interval:
        return self.delta if self.primary == "delta" else self.gain

    @property
    def verdict(self) -> str:
        if len(self.seeds) < 2:
            return "not resolved (one seed)"
        if not self.tested.excludes_zero():
            return "not resolved"
        return f"resolved: {self.a if self.tested.mean > 0 else self.b} better"


def t_interval(xs: np.ndarray, level: float = LEVEL) -> Interval:
    """Mean of ``xs`` with the two-sided Student-t interval (NaN bounds for one value)."""
    xs = np.asarray(xs, dtype=float)
    mean = float(xs.mean())
    if len(xs) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))
    return Interval(mean, mean - half, mean + half)


def paired_p_value(xs: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of mean(xs) = 0 (1.0 when undefined)."""
    xs = np.asarray(xs, dtype=float)
    if len(xs) < 2:
        return 1.0
    sd = xs.std(ddof=1)
    if sd == 0:
        return 1.0 if xs.mean() == 0 else 0.0
    t = xs.mean() / (sd / math.sqrt(len(xs)))
    return float(2 * stats.t.sf(abs(t), len(xs) - 1))


def bootstrap_two_way(g: np.ndarray, level: float = LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile interval of the grand mean of ``g`` (seeds × clients), resampling rows and
    columns independently with replacement."""
    g = np.asarray(g, dtype=float)
    s, c = g.shape
    mean = float(g.mean())
    if s < 2:
        return Interval(mean, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ws = rng.multinomial(s, np.full(s, 1.0 / s), size=resamples)
    wc = rng.multinomial(c, np.full(c, 1.0 / c), size=resamples)
    means = np.einsum("bs,sc,bc->b", ws, g, wc) / (s * c)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(mean, float(lo), float(hi))


def _by_seed(s: Setting) -> dict[int, tuple[CellResult, CellResult | None, dict]]:
    """seed -> (cell, its local reference, its Δ record); (cell, None, None) for a cell whose
    reference has not finished (a setting lists only the references it found, so they are
    matched by id, not by position)."""
    found = {r.id: (r, d) for r, d in zip(s.refs, s.deltas, strict=True)}
    out = {}
    for cell in s.cells:
        want = cell.id if cell.meta["method"] == "local" else cell.meta.get("ref")
        out[int(cell.meta["seed"])] = (cell, *found.get(want, (None, None)))
    return out


def _metric(cell: CellResult | None, client: str) -> float | None:
    if cell is None:
        return None
    return cell.clients.get(client, {}).get("test_metric")


def compare_pair(kind: str, question: str, a: Setting, b: Setting | None) -> Comparison | None:
    """A against B (B None: against A's own local references). None when they share no
    seed with complete metrics."""
    sa = _by_seed(a)
    sb = _by_seed(b) if b is not None else {k: (v[1], v[1], {"delta_pct": 0.0})
                                            for k, v in sa.items()}
    seeds = sorted(k for k in sa if k in sb and sa[k][1] is not None and sb[k][1] is not None)
    if not seeds:
        return None
    same_ref = all(sa[s][1].id == sb[s][1].id for s in seeds)
    clients = [c for c in sa[seeds[0]][0].clients
               if all(_metric(sa[s][0], c) is not None and _metric(sb[s][0], c) is not None
                      for s in seeds)]
    dd = np.array([sa[s][2]["delta_pct"] - sb[s][2]["delta_pct"] for s in seeds])
    if not clients or np.isnan(dd).any():
        return None
    g = np.array([[100.0 * (_metric(sa[s][0], c) - _metric(sb[s][0], c)) for c in clients]
                  for s in seeds])
    primary = "delta" if same_ref else "gain"
    return Comparison(kind=kind, question=question, a=a.label,
                      b=b.label if b is not None else "local", seeds=tuple(seeds),
                      clients=tuple(clients), delta=t_interval(dd), gain=t_interval(g.mean(1)),
                      gain_bootstrap=bootstrap_two_way(g),
                      p_value=paired_p_value(dd if same_ref else g.mean(1)), primary=primary)


def _questions(sets: list[Setting]) -> Iterator[tuple[str, str, Setting, Setting | None]]:
    by_key = {s.key: s for s in sets}
    runs = [s for s in sets if s.key[0] != "local" and s.deltas]
    for s in runs:
        m, prot, dp, ex = s.key
        yield "vs local", f"{m} vs local ({prot}, {dp}, {ex})", s, None
        if m != "muscle" and (o := by_key.get(("muscle", prot, dp, ex))):
            yield "vs exact Muscle", f"{m} vs muscle ({prot}, {dp}, {ex})", s, o
        if prot != "plain" and (o := by_key.get((m, "plain", dp, ex))):
            yield "protection vs plain", f"{prot} vs plain: {m} ({dp}, {ex})", s, o
        if ex == "per_batch" and (o := by_key.get((m, prot, dp, "per_epoch"))):
            yield "per_batch vs per_epoch", f"per_batch vs per_epoch: {m} ({prot}, {dp})", s, o
        if dp != "none" and (o := by_key.get((m, prot, "none", ex))):
            yield "DP vs no DP", f"{dp} vs no DP: {m} ({prot}, {ex})", s, o


def holm(comparisons: list[Comparison], level: float = LEVEL) -> list[Comparison]:
    """Holm's step-down correction of the Δ t-tests over ``comparisons``, family-wise
    error 1 − level: the same comparisons with ``holm`` filled in."""
    alpha = 1 - level
    order = sorted(range(len(comparisons)), key=lambda i: comparisons[i].p_value)
    out = list(comparisons)
    stopped = False
    for rank, i in enumerate(order):
        c = comparisons[i]
        ok = not stopped and len(c.seeds) >= 2 and c.p_value <= alpha / (len(order) - rank)
        stopped = stopped or not ok
        side = c.a if c.tested.mean > 0 else c.b
        out[i] = replace(c, holm=f"resolved: {side} better" if ok else "not resolved")
    return out


def paired_comparisons(sets: list[Setting]) -> list[Comparison]:
    """Every question of ``sets`` (KINDS order, then grid order), Holm-corrected together."""
    found = [c for kind, q, a, b in _questions(sets) if (c := compare_pair(kind, q, a, b))]
    found.sort(key=lambda c: KINDS.index(c.kind))
    return holm(found)


PAIRED_COLUMNS = ["kind", "question", "a", "b", "seeds", "clients", "delta_diff_pct",
                  "delta_ci95_low", "delta_ci95_high", "gain_points", "gain_ci95_low",
                  "gain_ci95_high", "gain_bootstrap_ci95_low", "gain_bootstrap_ci95_high",
                  "primary", "p_value", "verdict", "verdict_holm"]


def write_paired_csv(path: Path, comparisons: list[Comparison]) -> None:
    """One row per question, intervals as numbers (NaN where there is none)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PAIRED_COLUMNS)
    for c in comparisons:
        w.writerow([c.kind, c.question, c.a, c.b, len(c.seeds), len(c.clients),
                    *(f"{v:.6g}" for v in (c.delta.mean, c.delta.low, c.delta.high, c.gain.mean,
                                           c.gain.low, c.gain.high, c.gain_bootstrap.low,
                                           c.gain_bootstrap.high)),
                    c.primary, f"{c.p_value:.6g}", c.verdict, c.holm])
    path.write_text(buf.getvalue())


def verdict_table(comparisons: list[Comparison]) -> str:
    """The report's opening table: question, paired difference, 95 % intervals, verdict."""
    lines = ["| question | seeds | Δ difference (% pts), 95 % t | per-client gain (points), "
             "95 % t | gain, 95 % bootstrap seeds × clients | p | verdict | Holm |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for c in comparisons:
        bold = "**" if c.verdict.startswith("resolved") else ""
        d, g = c.delta.text(), c.gain.text()
        d, g = (f"{d} ᵃ", g) if c.primary == "delta" else (d, f"{g} ᵃ")
        lines.append(f"| {c.question} | {len(c.seeds)} | {d} | {g} | "
                     f"{c.gain_bootstrap.text()} | {c.p_value:.3g} | {bold}{c.verdict}{bold} | "
                     f"{c.holm} |")
    return "\n".join(lines)


def verdict_section(comparisons: list[Comparison]) -> list[str]:
    """The markdown lines that open results.md."""
    if not comparisons:
        return []
    resolved = sum(c.verdict.startswith("resolved") for c in comparisons)
    holm_resolved = sum(c.holm.startswith("resolved") for c in comparisons)
    return ["## Verdicts: paired differences with 95 % intervals", "",
            ("Each question compares A with B paired by seed (same split, same local "
             "reference): the mean difference of Δ (%) with a t-interval over seeds, and of the "
             "final test metric per client in points with a t-interval over seeds and a "
             "bootstrap interval over seeds × clients "
             f"({BOOTSTRAP_RESAMPLES:,} resamples). **Resolved** means the interval marked ᵃ "
             "excludes 0; *not resolved* means the difference is smaller than its uncertainty. "
             "The marked difference is Δ's where A and B share their local references, and the "
             "per-client gain where they do not (a DP level against no DP), since Δs against "
             "different references are not comparable; p is its paired t-test's. Holm: the "
             f"verdict after Holm's correction over all {len(comparisons)} questions "
             "(family-wise error 5 %). "
             f"{resolved} of {len(comparisons)} resolved, {holm_resolved} after Holm "
             "(DESIGN §7.2)."), "", verdict_table(comparisons), ""]
