"""``run_experiment`` refuses to overwrite a run directory or to resume it with another
config, naming the keys that differ."""

import pytest
from helpers.tiny import tiny_config

from fedmuscle_secure.errors import CheckpointError
from fedmuscle_secure.experiment.run import run_experiment


def test_refuses_to_overwrite_and_to_resume_with_another_config(tmp_path):
    cfg = tiny_config(**{"training.rounds": 1, "compare_local": False})
    run_experiment(cfg, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError):
        run_experiment(cfg, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match=r"config differs .* \(in seed\)"):
        run_experiment(cfg.with_overrides(seed=1), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"\(in muscle\.dim, training\.rounds\)"):
        run_experiment(cfg.with_overrides(**{"training.rounds": 2, "muscle.dim": 8}),
                       tmp_path / "r", resume=True, progress=False)

