"""``compare`` grid schema and cell expansion (DESIGN §7): fields named in errors, the Δ
reference of blocks that change local training, and ``--set`` applied before the grid (the
product of axes over a whole grid, and the shipped grids, are expanded in
tests/e2e/test_compare_grid_expansion.py)."""

from __future__ import annotations

import pytest
import yaml

from fedmuscle_secure.compare.grid import expand_file, load_grid
from fedmuscle_secure.errors import ConfigError
from helpers.compare_cells import write_grid
from helpers.tiny import tiny_config


@pytest.mark.parametrize("grid, field", [
    ({"seeds": [0], "grids": [{"methods": ["muscle"]}]}, "grids.0.methods"),
    ({"seeds": [0], "grids": [{"method": ["muscle"], "dp": ["nope"]}]}, "grids.0.dp.0"),
    ({"grids": [{"method": ["muscle"]}]}, "seeds"),
    ({"seeds": [0], "grids": []}, "grids"),
    ({"seeds": [0, 0], "grids": [{"method": ["muscle"]}]}, "seeds"),
    ({"seeds": [0], "dp_levels": {"a b": {}}, "grids": [{"method": ["muscle"]}]}, "dp_levels.a b"),
    ({"seeds": [0], "grids": [{"method": ["mus/cle"]}]}, "grids.0.method.0"),
    ({"seeds": [0], "extra": 1, "grids": [{"method": ["muscle"]}]}, "extra"),
])
def test_schema_errors_name_the_field(tmp_path, grid, field):
    with pytest.raises(ConfigError) as exc:
        load_grid(write_grid(tmp_path, grid))
    assert exc.value.field == field


def test_missing_base_is_named(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": "nope.yaml", "seeds": [0],
                                    "grids": [{"method": ["muscle"]}]}))
    with pytest.raises(ConfigError) as exc:
        load_grid(path)
    assert exc.value.field == "base" and "nope.yaml" in str(exc.value)


def test_block_overrides_that_change_local_training_get_their_own_reference(tmp_path):
    grid = {"seeds": [3], "overrides": {"training": {"local_epochs": 1}}, "grids": [
        {"method": ["muscle"]},
        {"method": ["pairwise"], "overrides": {"training": {"local_epochs": 2}}},
    ]}
    exp = expand_file(write_grid(tmp_path, grid))
    by_id = exp.by_id()
    a, b = by_id["muscle__plain__none__per_batch__s3"], by_id["pairwise__plain__none__per_batch__s3"]
    assert a.ref != b.ref
    assert by_id[a.ref].config.training.local_epochs == 1
    assert by_id[b.ref].config.training.local_epochs == 2


def test_set_overrides_the_base_before_the_grid_and_is_checked_like_run_set(tmp_path):
    base = tiny_config(**{"training.rounds": 1}).model_dump(mode="json")
    del base["training"]  # a path the file does not spell out is still a setting
    path = write_grid(tmp_path, {"seeds": [0], "overrides": {"muscle": {"dim": 8}},
                                 "grids": [{"method": ["muscle"]}]}, base=base)
    exp = expand_file(path, overrides={"training.rounds": 3, "muscle.dim": 4})
    assert {c.config.training.rounds for c in exp.cells} == {3}
    assert {c.config.muscle.dim for c in exp.cells} == {8}  # the grid's overrides apply after
    with pytest.raises(ConfigError, match="training.roundz"):
        expand_file(path, overrides={"training.roundz": 3})
    with pytest.raises(ConfigError, match="training.rounds"):
        expand_file(path, overrides={"training.rounds": -1})
