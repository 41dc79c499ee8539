"""A baseline's whole run writes its summary against the local reference."""

import math

import pytest

from fedmuscle_secure.experiment.run import run_experiment
from helpers.baselines import baseline_config


@pytest.mark.slow
def test_run_writes_summary_against_local(tmp_path):
    cfg = baseline_config("simclr", **{"training.final_local_update": False})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    assert set(res.final) == {"simclr", "local"}
    assert all(math.isfinite(v) for per in res.final.values() for v in per.values())
    assert "`simclr`" in (res.run_dir / "summary.md").read_text()

