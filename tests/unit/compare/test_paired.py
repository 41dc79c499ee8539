"""Paired comparisons (DESIGN §7.2) on synthetic cell records whose answer is known: the
intervals against scipy's own tests, the bootstrap against its exact distribution, the
verdicts on effects built to be resolved (or not), the questions a grid asks, Holm."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats

from fedmuscle_secure.compare.cells import load_cells, settings
from fedmuscle_secure.compare.paired import (
    Comparison,
    Interval,
    bootstrap_two_way,
    holm,
    paired_comparisons,
    paired_p_value,
    t_interval,
)
from fedmuscle_secure.compare.report import write_report
from helpers.compare_cells import make_cell

SEEDS = range(10)


def test_t_interval_and_p_value_agree_with_scipy():
    rng = np.random.default_rng(3)
    for n in (2, 3, 10):
        xs = rng.normal(0.7, 2.0, size=n)
        ci = stats.ttest_1samp(xs, 0.0).confidence_interval(0.95)
        got = t_interval(xs)
        assert got.mean == pytest.approx(xs.mean())
        assert (got.low, got.high) == pytest.approx((ci.low, ci.high))
        assert paired_p_value(xs) == pytest.approx(stats.ttest_1samp(xs, 0.0).pvalue)
        ys = rng.normal(size=n)
        assert paired_p_value(xs + ys - ys) == pytest.approx(stats.ttest_rel(xs + ys, ys).pvalue)
    one = t_interval(np.array([1.5]))
    assert one.mean == 1.5 and math.isnan(one.low) and not one.excludes_zero()


def test_two_way_bootstrap_matches_its_exact_distribution():
    """Two seeds, one client: a resampled mean is g0, (g0 + g1)/2 or g1 with probability
    1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are g0 and g1."""
    got = bootstrap_two_way(np.array([[1.0], [3.0]]))
    assert (got.mean, got.low, got.high) == (2.0, 1.0, 3.0)
    # a constant grid has a degenerate interval; rows and columns are both resampled
    assert bootstrap_two_way(np.full((4, 3), 2.5)) == Interval(2.5, 2.5, 2.5)
    g = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])  # seeds agree, clients differ
    wide = bootstrap_two_way(g)
    assert wide.low == 0.0 and wide.high == 10.0  # only client resampling can move it


def _grid(out, local, methods):
    """Cells for SEEDS: ``local(seed)`` -> {client: metric}; ``methods`` maps a setting
    (method, protection, dp, exchange) to a function of (seed, local metrics)."""
    for s in SEEDS:
        loc = local(s)
        make_cell(out, f"local__none__s{s}", "local", "plain", "none", "-", s, None, loc)
        for (m, prot, dp, ex), f in methods.items():
            make_cell(out, f"{m}__{prot}__{dp}__{ex}__s{s}", m, prot, dp, ex, s,
                      f"local__none__s{s}", f(s, loc))


def _by_question(out) -> dict[str, Comparison]:
    return {c.question: c for c in paired_comparisons(settings(load_cells(out)))}


def test_pairing_resolves_a_small_effect_that_the_seed_spread_hides(tmp_path):
    """Local accuracy swings by ±20 points between seeds; A adds 2 points (± 0.5) to it on
    every seed, B adds seed noise of mean 0. Unpaired means ± std would call both unresolved;
    paired, A is resolved and B is not."""
    rng = np.random.default_rng(7)
    swing = rng.uniform(-0.2, 0.2, size=len(SEEDS))
    jitter = rng.uniform(-0.005, 0.005, size=(len(SEEDS), 2))
    noise = rng.normal(0, 0.02, size=(len(SEEDS), 2))
    noise -= noise.mean(0)  # mean exactly 0 per client over seeds

    def local(s):
        return {"x": 0.5 + swing[s], "y": 0.6 + swing[s]}

    _grid(tmp_path, local, {
        ("muscle", "plain", "none", "per_batch"):
            lambda s, lo: {c: v + 0.02 + jitter[s, i] for i, (c, v) in enumerate(lo.items())},
        ("pairwise", "plain", "none", "per_batch"):
            lambda s, lo: {c: v + noise[s, i] for i, (c, v) in enumerate(lo.items())},
    })
    q = _by_question(tmp_path)
    a = q["muscle vs local (plain, none, per_batch)"]
    assert a.verdict == "resolved: muscle/plain/none/per_batch better"
    assert a.gain.mean == pytest.approx(2.0 + 100 * jitter.mean(), abs=1e-3)  # metrics.csv: 6 digits
    assert a.gain.low > 1.0 and a.gain.high < 3.0
    assert a.gain_bootstrap.low > 1.0 and a.gain_bootstrap.high < 3.0
    b = q["pairwise vs local (plain, none, per_batch)"]
    assert b.gain.mean == pytest.approx(0.0, abs=1e-3)
    assert b.verdict == "not resolved" and b.gain.low < 0 < b.gain.high
    # pairwise against exact muscle: about -2 points, resolved for muscle
    c = q["pairwise vs muscle (plain, none, per_batch)"]
    assert c.verdict == "resolved: muscle/plain/none/per_batch better"
    assert c.gain.mean == pytest.approx(-2.0 - 100 * jitter.mean(), abs=1e-3)
    assert len(c.seeds) == 10 and c.clients == ("x", "y")


def test_the_questions_a_grid_asks(tmp_path):
    same = lambda s, lo: dict(lo)  # noqa: E731 - a table of settings
    _grid(tmp_path, lambda s: {"x": 0.5, "y": 0.6}, {
        ("muscle", "plain", "none", "per_batch"): same,
        ("muscle", "plain", "none", "per_epoch"): same,
        ("muscle_sum", "plain", "none", "per_epoch"): same,
        ("muscle_sum", "secagg", "none", "per_epoch"): same,
        ("muscle_sum", "ckks", "eps8", "per_epoch"): same,
        ("muscle_sum", "ckks", "none", "per_epoch"): same,
    })
    got = sorted(_by_question(tmp_path))
    assert got == sorted([
        "muscle vs local (plain, none, per_batch)",
        "muscle vs local (plain, none, per_epoch)",
        "muscle_sum vs local (plain, none, per_epoch)",
        "muscle_sum vs local (secagg, none, per_epoch)",
        "muscle_sum vs local (ckks, eps8, per_epoch)",
        "muscle_sum vs local (ckks, none, per_epoch)",
        "muscle_sum vs muscle (plain, none, per_epoch)",
        "per_batch vs per_epoch: muscle (plain, none)",
        "secagg vs plain: muscle_sum (none, per_epoch)",
        "ckks vs plain: muscle_sum (none, per_epoch)",
        "eps8 vs no DP: muscle_sum (ckks, per_epoch)",
    ])
    # identical metrics: every difference is exactly 0, nothing resolves
    assert all(c.verdict == "not resolved" and c.delta.mean == 0 for c in
               _by_question(tmp_path).values())


def _cmp(p: float, mean: float = 1.0) -> Comparison:
    i = Interval(mean, mean - 1, mean + 1)
    return Comparison("vs local", f"q{p}", "a", "b", (0, 1, 2), ("x",), i, i, i, p)


def test_holm_steps_down_and_stops_at_the_first_failure():
    # 4 tests at 5 %: thresholds 0.0125, 0.0167, 0.025, 0.05 in p order
    got = holm([_cmp(0.04), _cmp(0.001), _cmp(0.03), _cmp(0.016)])
    assert [c.holm for c in got] == ["not resolved", "resolved: a better", "not resolved",
                                     "resolved: a better"]
    got = holm([_cmp(0.001), _cmp(0.02), _cmp(0.0001, mean=-1.0)])
    # thresholds 0.0167, 0.025, 0.05: 0.0001 and 0.001 pass, 0.02 passes at 0.05
    assert [c.holm for c in got] == ["resolved: a better", "resolved: a better",
                                     "resolved: b better"]


def test_the_report_opens_with_the_verdicts_and_writes_them(tmp_path):
    _grid(tmp_path, lambda s: {"x": 0.5 + 0.01 * s, "y": 0.6},
          {("muscle", "plain", "none", "per_batch"): lambda s, lo: {"x": lo["x"] + 0.03,
                                                                    "y": lo["y"] + 0.01 * s}})
    write_report(tmp_path, "t")
    md = (tmp_path / "results.md").read_text()
    assert md.index("## Verdicts") < md.index("| client | model |")
    assert "| muscle vs local (plain, none, per_batch) | 10 |" in md
    with open(tmp_path / "paired.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["verdict"].startswith("resolved")
    # per seed: x gains 3 points, y gains s points -> mean gain (3 + 4.5)/2 = 3.75
    assert float(rows[0]["gain_points"]) == pytest.approx(3.75)
    per_seed = np.array([(3.0 + s) / 2 for s in SEEDS])
    ci = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert (float(rows[0]["gain_ci95_low"]), float(rows[0]["gain_ci95_high"])) == \
        pytest.approx((ci.low, ci.high), rel=1e-5)
    with open(tmp_path / "results.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    y0 = next(r for r in cells if r["cell"] == "muscle__plain__none__per_batch__s0"
              and r["client"] == "y")
    ci_y = stats.ttest_1samp(np.array(list(SEEDS), float), 0.0).confidence_interval(0.95)
    assert (float(y0["client_gain_ci95_low"]), float(y0["client_gain_ci95_high"])) == \
        pytest.approx((ci_y.low, ci_y.high), rel=1e-5)


def test_a_dp_level_against_no_dp_is_judged_on_the_metrics_not_on_the_deltas(tmp_path):
    """Each DP cell's Δ is against a local model trained with the same DP-SGD: here DP
    costs every client 20 points, yet its Δ against its own (noisier) local reference is
    higher than no-DP's Δ. The verdict must follow the metrics: no DP is better."""
    for s in SEEDS:
        make_cell(tmp_path, f"local__none__s{s}", "local", "plain", "none", "-", s, None,
                  {"x": 0.70 + 0.01 * s, "y": 0.60})
        make_cell(tmp_path, f"local__eps8__s{s}", "local", "plain", "eps8", "-", s, None,
                  {"x": 0.40 + 0.01 * s, "y": 0.30})
        make_cell(tmp_path, f"m__plain__none__e__s{s}", "m", "plain", "none", "e", s,
                  f"local__none__s{s}", {"x": 0.72 + 0.01 * s, "y": 0.62})
        make_cell(tmp_path, f"m__plain__eps8__e__s{s}", "m", "plain", "eps8", "e", s,
                  f"local__eps8__s{s}", {"x": 0.52 + 0.01 * s, "y": 0.42})
    c = _by_question(tmp_path)["eps8 vs no DP: m (plain, e)"]
    assert c.primary == "gain" and c.delta.mean > 0
    assert c.gain.mean == pytest.approx(-20.0, abs=1e-3)
    assert c.verdict == "resolved: m/plain/none/e better"
    assert _by_question(tmp_path)["m vs local (plain, none, e)"].primary == "delta"


def test_a_cell_whose_local_reference_is_missing_shifts_no_other_seed(tmp_path):
    """Seed 0's local cell has not finished: the comparison drops seed 0 and pairs every other
    seed with its own reference (a setting lists only the references it found)."""
    for s in range(4):
        if s:
            make_cell(tmp_path, f"local__none__s{s}", "local", "plain", "none", "-", s, None,
                      {"x": 0.10 * s, "y": 0.10 * s})
        make_cell(tmp_path, f"m__plain__none__e__s{s}", "m", "plain", "none", "e", s,
                  f"local__none__s{s}", {"x": 0.10 * s + 0.01, "y": 0.10 * s + 0.01})
    c = _by_question(tmp_path)["m vs local (plain, none, e)"]
    assert c.seeds == (1, 2, 3)
    assert c.gain.mean == pytest.approx(1.0, abs=1e-3) and c.gain.high - c.gain.low < 1e-3
