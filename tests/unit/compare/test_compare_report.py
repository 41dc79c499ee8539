"""The ``compare`` report's arithmetic against a hand computation on a synthetic cells
directory (DESIGN §2.4): Δ(%), mean ± std over seeds, mean gain, wins/losses, traffic, ε."""

from __future__ import annotations

import csv

import pytest

from fedmuscle_secure.compare.report import positive_from, write_report
from helpers.compare_cells import make_cell


@pytest.fixture
def synthetic(tmp_path):
    out = tmp_path / "out"
    make_cell(out, "local__none__s0", "local", "plain", "none", "-", 0, None, {"x": 0.50, "y": 0.40})
    make_cell(out, "local__none__s1", "local", "plain", "none", "-", 1, None, {"x": 0.60, "y": 0.50})
    make_cell(out, "muscle__plain__none__per_batch__s0", "muscle", "plain", "none", "per_batch", 0,
              "local__none__s0", {"x": 0.55, "y": 0.38}, eps={"x": 7.5, "y": 8.0}, wall=20.0)
    make_cell(out, "muscle__plain__none__per_batch__s1", "muscle", "plain", "none", "per_batch", 1,
              "local__none__s1", {"x": 0.66, "y": 0.45}, eps={"x": 7.0, "y": 7.9}, wall=30.0)
    make_cell(out, "muscle__ckks__none__per_batch__s0", "muscle", "ckks", "none", "per_batch", 0,
              "local__none__s0", {"x": 0.50, "y": 0.40})
    # an unfinished cell (no marker) is not reported
    (out / "cells" / "muscle__ckks__none__per_batch__s1").mkdir()
    return out


def test_report_math_against_hand_computation(synthetic):
    expected = ["local__none__s0", "local__none__s1", "muscle__plain__none__per_batch__s0",
                "muscle__plain__none__per_batch__s1", "muscle__ckks__none__per_batch__s0",
                "muscle__ckks__none__per_batch__s1"]
    rep = write_report(synthetic, "synthetic", order=expected, expected=expected)
    assert rep["cells"] == 5 and rep["missing"] == ["muscle__ckks__none__per_batch__s1"]
    md = (synthetic / "results.md").read_text()
    # per seed: s0 Δ = (10 + -5)/2 = 2.5, gain = (5 - 2)/2 = 1.5; s1 Δ = (10 - 10)/2 = 0,
    # gain = (6 - 5)/2 = 0.5 -> mean ± sample std over seeds
    assert "**1.25 ± 1.77**" in md
    assert "1.00 ± 0.71" in md
    # client x: muscle 55, 66 -> 60.50 ± 7.78; local 50, 60 -> 55.00 ± 7.07
    assert "| x | resnet10t | digit10 | accuracy | 60.50 ± 7.78 | 55.00 ± 7.07 |" in md
    # wins/losses on per-client means: x 60.5 > 55 (win), y 41.5 < 45 (loss)
    assert "| | | | wins/losses vs local | 1/1 | – |" in md
    # two settings -> one table each, under a heading
    assert "## protection `plain`, dp `none`, exchange `per_batch`" in md
    assert "## protection `ckks`, dp `none`, exchange `per_batch`" in md
    assert "**0.00 ± 0.00**" in md            # the ckks cell equals its local reference
    # traffic: (2 + 4)/2 = 3 MB sent, 4 MB received per round; compute (1 + 3)/2 = 2 s;
    # cell wall time 20, 30 -> 25.0 ± 7.1
    assert "| muscle | plain | none | per_batch | 3.000 | 4.000 | 2.00 | 25.0 ± 7.1 |" in md
    # ε record: the largest client's per seed: 8.0, 7.9 -> 7.950 ± 0.071; client-level off
    assert "| muscle | plain | none | per_batch | 7.950 ± 0.071 | ∞ (off) | 1.25 ± 1.77 |" in md
    assert ("Smallest record-level ε from which Δ stays positive (Δ > 0 there and at every "
            "larger ε run): 7.95 (`muscle/plain/none/per_batch`).") in md
    assert "Incomplete" in md and "muscle__ckks__none__per_batch__s1" in md
    for png in rep["plots"]:
        assert png.endswith(".png") and (synthetic / png.split("/")[-1]).stat().st_size > 1000

    with open(synthetic / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * 2
    r = next(r for r in rows if r["cell"] == "muscle__plain__none__per_batch__s1" and r["client"] == "y")
    assert float(r["test_metric"]) == pytest.approx(0.45)
    assert float(r["local_metric"]) == pytest.approx(0.50)
    assert float(r["gain_points"]) == pytest.approx(-5.0)
    assert float(r["rel_pct"]) == pytest.approx(-10.0)
    assert float(r["mb_sent_per_round"]) == pytest.approx(3.0)
    assert float(r["eps_record"]) == pytest.approx(7.9)
    assert r["ref_cell"] == "local__none__s1" and r["seed"] == "1" and r["metric"] == "micro_f1"
    lo = next(r for r in rows if r["cell"] == "local__none__s0" and r["client"] == "x")
    assert float(lo["gain_points"]) == 0.0 and float(lo["local_metric"]) == pytest.approx(0.5)


def test_positive_from_wants_every_larger_epsilon_positive():
    pts = [(1.0, -2.0, "a"), (3.0, 1.0, "b"), (10.0, -0.5, "c"), (100.0, 4.0, "d"),
           (1000.0, 6.0, "e")]
    assert positive_from(pts) == (100.0, "d")          # not 3: Δ ≤ 0 at ε = 10 above it
    assert positive_from([*pts, (5000.0, 0.0, "f")]) is None
    assert positive_from([(2.0, 0.1, "x")]) == (2.0, "x")


def test_local_cells_with_dp_sgd_are_labelled_out_of_budget_references(synthetic, tmp_path):
    write_report(synthetic, "synthetic")
    assert "out-of-budget" not in (synthetic / "results.md").read_text()  # no ε spent: no label
    out = tmp_path / "dp"
    make_cell(out, "local__eps8__s0", "local", "plain", "eps8", "-", 0, None,
              {"x": 0.5, "y": 0.4}, eps={"x": 6.25, "y": 7.5})
    make_cell(out, "muscle__plain__eps8__per_batch__s0", "muscle", "plain", "eps8", "per_batch",
              0, "local__eps8__s0", {"x": 0.55, "y": 0.38}, eps={"x": 7.0, "y": 7.0})
    write_report(out, "dp")
    md = (out / "results.md").read_text()
    privacy = md.split("## Privacy: ε per setting", 1)[1]
    assert "**`local` cells are out-of-budget references.**" in privacy
    assert "dp `eps8`: up to 7.500)" in privacy  # the largest client's ε of the local cell
    assert "in no federated cell's" in privacy and "never runs" in privacy


def test_refused_cells_are_listed_once_per_setting_with_their_reason():
    from fedmuscle_secure.compare.report import refused_table

    why = "grids.1: clients.1.model: 'fedavg' averages the encoder across clients, so every client needs the same architecture\nmore"
    lines = refused_table([(f"fedavg__plain__none__per_batch__s{s}", why) for s in range(3)]
                          + [("mira__secagg__none__per_batch__s0", "grids.2: protection | plain")])
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == [
        "| `fedavg` | `plain` | `none` | `per_batch` | 3 | clients.1.model: 'fedavg' averages "
        "the encoder across clients, so every client needs the same architecture |",
        "| `mira` | `secagg` | `none` | `per_batch` | 1 | protection / plain |"]
    assert refused_table([]) == []
