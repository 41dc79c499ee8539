"""``compare`` cell expansion (DESIGN §7) over whole grids: the product of axes,
deduplicated local cells and the Δ reference of each cell, and every shipped grid of
``configs/`` (hundreds of resolved and checked configs). The schema's errors and the
overrides are in tests/unit/compare/test_compare_grid.py."""

from __future__ import annotations

import pytest

from fedmuscle_secure.compare.grid import expand_file
from fedmuscle_secure.errors import ConfigError
from helpers.compare_cells import write_grid
from helpers.paths import REPO

pytestmark = pytest.mark.slow


DP = {"none": {}, "rec8": {"privacy": {"dp_sgd": {"enabled": True, "target_epsilon": 8.0}}},
      "cli1": {"privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}}}


def test_expansion_product_local_dedup_and_references(tmp_path):
    grid = {"seeds": [0, 1], "dp_levels": DP, "grids": [
        {"method": ["muscle", "muscle_sum", "local"], "protection": ["plain", "secagg"],
         "dp": ["none", "rec8", "cli1"], "exchange": ["per_batch", "per_epoch"]},
        {"method": ["muscle_sum"], "dp": ["none"], "exchange": ["per_epoch"]},  # duplicates
    ]}
    path = write_grid(tmp_path, grid)
    # secagg trains only the sum form: every muscle × secagg cell is invalid, each named.
    with pytest.raises(ConfigError) as exc:
        expand_file(path)
    assert "muscle__secagg__none__per_batch__s0" in str(exc.value)
    assert "12 cell(s)" in str(exc.value)
    exp = expand_file(path, allow_invalid=True)
    assert len(exp.invalid) == 12
    ids = [c.id for c in exp.cells]
    assert len(ids) == len(set(ids))
    local = [c for c in exp.cells if c.is_local]
    # local depends on the seed and DP-SGD only: not on protection, exchange or rep. noise
    assert sorted(c.id for c in local) == ["local__none__s0", "local__none__s1",
                                           "local__rec8__s0", "local__rec8__s1"]
    others = [c for c in exp.cells if not c.is_local]
    # muscle: plain × 3 dp × 2 exchanges × 2 seeds; muscle_sum: 2 protections × ... (block 2
    # repeats cells of block 1 and adds none)
    assert len(others) == 12 + 24
    by_id = exp.by_id()
    for c in others:
        ref = by_id[c.ref]
        assert ref.is_local and ref.seed == c.seed == c.config.seed
        assert ref.config.privacy.dp_sgd == c.config.privacy.dp_sgd
        assert ref.config.training == c.config.training
        assert not c.config.compare_local and not ref.config.compare_local
        assert c.config.muscle.method == c.method and c.config.protection == c.protection
        assert c.config.muscle.exchange == c.exchange
        assert c.id == f"{c.method}__{c.protection}__{c.dp}__{c.exchange}__s{c.seed}"
    assert by_id["muscle_sum__secagg__cli1__per_epoch__s1"].ref == "local__none__s1"
    assert by_id["muscle__plain__rec8__per_batch__s0"].ref == "local__rec8__s0"
    assert by_id["local__none__s0"].config.privacy.representation_noise.enabled is False
    assert by_id["muscle__plain__cli1__per_batch__s0"].config.privacy.representation_noise.enabled


def test_shipped_grids_expand(tmp_path):
    root = REPO / "configs"
    exp = expand_file(root / "compare-secure.yaml")
    assert len([c for c in exp.cells if c.is_local]) == 2 * 10
    # 2 DP-SGD settings (none, epsilon 8) x 10 seeds of local references (the curve shares
    # the no-DP-SGD ones); 3 protections x (2 exchanges without DP + per_epoch under DP-SGD)
    # x 10 seeds; the curve: no noise + 5 sigmas, x 10 seeds, its no-noise cell being
    # block 1's plain/none/per_batch cell.
    assert len(exp.cells) == 20 + 3 * 3 * 10 + 5 * 10
    assert {(c.dp, c.exchange) for c in exp.cells if c.dp == "record-eps8" and not c.is_local} \
        == {("record-eps8", "per_epoch")}
    curve = [c for c in exp.cells if c.dp.startswith("client-sigma-")]
    assert len(curve) == 5 * 10 and all(c.ref and c.ref.startswith("local__none__") for c in curve)
    assert len({c.dp for c in curve}) == 5
    protected = {(c.protection, c.exchange) for c in exp.cells if c.protection != "plain"}
    assert protected == {(p, e) for p in ("secagg", "ckks") for e in ("per_epoch", "per_batch")}
    assert {c.config.seed for c in exp.cells} == set(range(10))
    paper = expand_file(root / "compare-paper.yaml", allow_invalid=True)
    methods = {c.method for c in paper.cells} | {i.split("__")[0] for i, _ in paper.invalid}
    assert methods == {"muscle", "muscle_sum", "pairwise", "gram", "fedhenn", "cofed", "feddf",
                       "simclr", "pseudo_label", "local", "fedavg", "fedprox", "mfed", "feddea",
                       "mira", "mocha", "fedem"}
    assert {i.split("__")[0] for i, _ in paper.invalid} == {"fedavg", "fedprox", "mfed", "feddea",
                                                            "mira", "mocha", "fedem"}
    assert {c.config.seed for c in paper.cells} == set(range(10))
    shapes = expand_file(root / "compare-shapes.yaml", allow_invalid=True)
    assert {c.method for c in shapes.cells} | {i.split("__")[0] for i, _ in shapes.invalid} \
        == methods - {"fedavg", "fedprox", "mfed", "feddea", "mira", "mocha", "fedem"}
    assert {c.config.data.dataset for c in shapes.cells} == {"shapes"}
    assert {c.config.seed for c in shapes.cells} == set(range(10))
    fmtl = expand_file(root / "compare-fmtl.yaml", allow_invalid=True)
    # the weighted means also under secagg (M-Fed refused there: tasks of one and two
    # clients), mocha and fedem refused (three tasks where they need one)
    assert len(fmtl.cells) == 10 + 6 * 10 + 3 * 10 and len(fmtl.invalid) == 3 * 10
    refused = {i.split("__")[0] + "/" + i.split("__")[1]: why for i, why in fmtl.invalid}
    assert set(refused) == {"mfed/secagg", "mocha/plain", "fedem/plain"}
    assert "task 'coarse' has ['hospital-a']" in refused["mfed/secagg"]
    assert "every client needs the same task" in refused["mocha/plain"]
    assert "every client needs the same task" in refused["fedem/plain"]
    assert {(c.method, c.protection) for c in fmtl.cells if c.protection == "secagg"} == {
        ("fedavg", "secagg"), ("fedprox", "secagg"), ("feddea", "secagg")}
    assert {c.method for c in fmtl.cells} == {"local", "muscle", "muscle_sum", "fedavg", "fedprox",
                                              "mfed", "feddea"}
    # one architecture and one task: every weight-sharing method runs, plain and secure
    shapes = expand_file(root / "compare-fmtl-shapes.yaml")
    assert len(shapes.cells) == 10 + 8 * 10 + 5 * 10 and not shapes.invalid
    assert {c.method for c in shapes.cells if c.protection == "plain"} == {
        "local", "muscle", "muscle_sum", "fedavg", "fedprox", "mfed", "feddea", "mocha", "fedem"}
    assert all({k.model for k in c.config.clients} == {"resnet10t"} for c in fmtl.cells)


def test_the_heterogeneous_grid_refuses_weight_sharing_naming_the_client():
    exp = expand_file(REPO / "configs" / "compare-paper.yaml", allow_invalid=True)
    refused = {i.split("__")[0]: why for i, why in exp.invalid}
    assert set(refused) == {"fedavg", "fedprox", "mfed", "feddea", "mira", "mocha", "fedem"}
    assert "clients.0.adapter" in refused["mira"]
    assert all("clients.1.model" in why and "same architecture" in why
               for m, why in refused.items() if m != "mira")
