"""The report's plots say what they show (DESIGN §7.2): error bars are 95 % t-intervals,
ε ticks are readable and separate from the no-DP position, and a grid without DP gets no
Δ-against-ε plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from fedmuscle_secure.compare.plots import _eps_ticks, _mean_ci
from fedmuscle_secure.compare.report import write_report
from helpers.compare_cells import make_cell


def test_error_bars_are_t_interval_half_widths():
    xs = [1.0, 4.0, 2.5, 3.0]
    ci = stats.ttest_1samp(xs, 0.0).confidence_interval(0.95)
    mean, half = _mean_ci(xs)
    assert mean == pytest.approx(np.mean(xs)) and half == pytest.approx(ci.high - np.mean(xs))
    assert _mean_ci([2.0]) == (2.0, 0.0)


@pytest.mark.parametrize(("lo", "hi", "labels"), [
    (2.0, 8.0, ["1", "2", "5", "10"]),
    (7.8e3, 4.6e8, ["1e4", "1e5", "1e6", "1e7", "1e8"]),
])
def test_eps_ticks_are_readable_and_infinity_stands_apart(lo, hi, labels):
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    _eps_ticks(ax, lo, hi, hi * 6)
    fig.canvas.draw()
    got = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert got == [*labels, "∞\n(no DP)"]


def test_a_grid_without_dp_has_no_delta_against_epsilon_plot(tmp_path):
    for s in (0, 1):
        make_cell(tmp_path, f"local__none__s{s}", "local", "plain", "none", "-", s, None,
                  {"x": 0.5, "y": 0.4})
        make_cell(tmp_path, f"muscle__plain__none__per_batch__s{s}", "muscle", "plain", "none",
                  "per_batch", s, f"local__none__s{s}", {"x": 0.55, "y": 0.42})
    (tmp_path / "delta_vs_eps.png").write_bytes(b"stale")  # from an earlier report
    rep = write_report(tmp_path, "no-dp")
    assert not (tmp_path / "delta_vs_eps.png").exists()
    assert sorted(p.rsplit("/", 1)[1] for p in rep["plots"]) == [
        "communication.png", "per_client__plain__none__per_batch.png"]
