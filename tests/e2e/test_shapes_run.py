"""`run` on the rendered shapes benchmark (DESIGN §8), end to end, at a tiny size."""

import pytest

from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


@pytest.mark.slow
def test_run_on_shapes(tmp_path):
    cfg = tiny_config(**{
        "data": {"dataset": "shapes", "shapes": {"num_images": 400, "channels": 3},
                 "public_size": 96, "test_size": 144, "shard_size": 40, "val_fraction": 0.25},
        "clients": [{"name": "a", "model": "test_resnet", "image_size": 16, "task": "shape"},
                    {"name": "b", "model": "test_vit", "image_size": 16, "task": "shape_attrs"},
                    {"name": "c", "model": "test_resnet", "image_size": 16,
                     "task": "shape_scale"}],
        "training.rounds": 1, "compare_local": True})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    for method in ("muscle", "local"):
        assert set(res.final[method]) == {"a", "b", "c"}
        assert all(0.0 <= v <= 1.0 for v in res.final[method].values())
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "| b | test_vit | shape_attrs | micro_f1 |" in summary
