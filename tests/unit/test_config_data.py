"""The config's ``data`` section for the rendered shapes (DESIGN §8): each refusal names its
field; the shipped shapes configs are valid; the data source renders what is asked."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from fedmuscle_secure.config import dump_config
from fedmuscle_secure.data.shapes import NUM_CELLS, partition_groups
from fedmuscle_secure.data.source import load_dataset, split_groups
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.checks import load_config, parse_config
from fedmuscle_secure.federation.split import make_split
from helpers.paths import REPO
from helpers.tiny import tiny_config

SHAPES = REPO / "configs" / "shapes.yaml"


def _raw():
    return yaml.safe_load(SHAPES.read_text())


def test_shipped_shapes_config_is_valid_and_sized_as_the_benchmark():
    cfg = load_config(SHAPES)
    d = cfg.data
    assert d.dataset == "shapes" and d.test_size >= 2000 and d.public_size >= 2000
    assert 200 <= d.shard_size <= 400
    assert len({c.model for c in cfg.clients}) == 4 and len({c.task for c in cfg.clients}) == 4


BAD = [
    ("digit task on shapes", lambda r: r["clients"][2].update(task="digit10"), "clients.2.task",
     r"task 'digit10' is defined on the digits' labels 0\.\.9 .* use one of \['classify', 'shape'"),
    ("too few images", lambda r: r["data"]["shapes"].update(num_images=4000),
     "data.shapes.num_images", r"4000 images cannot hold .* expected at least 5000"),
    ("two channels", lambda r: r["data"]["shapes"].update(channels=2), "data.shapes.channels",
     ""),
    ("no images", lambda r: r["data"]["shapes"].update(num_images=0), "data.shapes.num_images",
     ""),
    ("unknown key", lambda r: r["data"]["shapes"].update(colours=3), "data.shapes.colours", ""),
    ("tiny images", lambda r: r["data"].update(image_size=6), "data.image_size",
     "8 pixels or more"),
    ("a path", lambda r: r["data"].update(path="/tmp"), "data.path", "rendered, not read"),
    ("section on digits", lambda r: r["data"].update(dataset="digits", public_size=900,
                                                     test_size=300, shard_size=None),
     "data.shapes", "only data.dataset 'shapes' is rendered"),
    ("too many groups per client", lambda r: r["data"].update(partition="classes",
                                                              classes_per_client=13),
     "data.classes_per_client", r"expected an integer in \[1, 12\]"),
]


@pytest.mark.parametrize(("what", "edit", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_shapes_configs_name_the_field(what, edit, field, message):
    raw = _raw()
    edit(raw)
    with pytest.raises(ConfigError) as err:
        cfg = parse_config(raw)
        make_split(cfg)  # the partition's own checks run with the data
    assert err.value.field == field, what
    assert re.search(message, str(err.value)), str(err.value)


def test_shapes_tasks_are_refused_on_the_digits():
    with pytest.raises(ConfigError, match=r"clients\.1\.task: task 'shape_attrs' is defined on "
                                          r"the shapes' latent cells .*'digit10'"):
        tiny_config(clients=[
            {"name": "a", "model": "test_resnet", "task": "coarse"},
            {"name": "b", "model": "test_resnet", "task": "shape_attrs"},
            {"name": "c", "model": "test_resnet", "task": "digit10"}])


def test_classify_serves_the_shapes_cells():
    raw = _raw()
    raw["clients"][0]["task"] = "classify"
    parse_config(raw)


def test_dump_leaves_out_a_null_shapes_section():
    assert "shapes" not in dump_config(tiny_config())  # older runs' configs still match
    dumped = yaml.safe_load(dump_config(load_config(SHAPES)))
    assert dumped["data"]["shapes"] == {"num_images": 10000, "channels": 1, "clutter": True,
                                        "seed": 0}


@pytest.mark.parametrize(("image_size", "channels"), [(None, 1), (12, 3)])
def test_load_dataset_renders_the_configured_images(image_size, channels):
    raw = _raw()
    raw["data"].update(image_size=image_size)
    raw["data"]["shapes"].update(num_images=6500, channels=channels)
    cfg = parse_config(raw)
    x, y = load_dataset(cfg.data)
    size = image_size or 16
    assert x.shape == (6500, channels, size, size) and x.dtype == np.float32
    assert y.shape == (6500,) and 0 <= y.min() and y.max() < NUM_CELLS
    np.testing.assert_array_equal(split_groups(cfg.data, y), y // 12)
    x2, _ = load_dataset(cfg.data.model_copy(update={"shapes": cfg.data.shapes.model_copy(
        update={"seed": 1})}))
    assert not np.array_equal(x, x2)  # the rendering seed is the dataset


def test_split_of_the_shipped_config_skews_over_shape_and_scale():
    """Dirichlet over the 12 groups: each client's shard is dominated by a few of them,
    while the test split covers every cell."""
    cfg = load_config(SHAPES)
    split = make_split(cfg)
    assert len(split.test_y) == 2000 and len(split.public_x) == 2000
    assert len(np.unique(split.test_y)) == NUM_CELLS
    for shard in split.shards:
        groups = partition_groups(np.concatenate([shard.y_train, shard.y_val]))
        assert len(groups) == 250
        top3 = np.sort(np.bincount(groups, minlength=12))[-3:].sum()
        assert top3 > 250 * 3 / 12 * 1.5  # well above the 62.5 of a uniform shard


def test_classes_partition_gives_each_client_its_groups():
    raw = _raw()
    raw["data"].update(partition="classes", classes_per_client=3)
    split = make_split(parse_config(raw))
    for k, shard in enumerate(split.shards):
        groups = set(partition_groups(np.concatenate([shard.y_train, shard.y_val])).tolist())
        assert groups == {(3 * k + j) % 12 for j in range(3)}
