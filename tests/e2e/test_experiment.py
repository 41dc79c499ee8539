import csv
import json

import pytest

from fedmuscle_secure.errors import RunInterrupted
from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["per_batch", "per_epoch"])
def test_resume_ends_with_the_same_metrics_as_an_uninterrupted_run(tmp_path, exchange):
    cfg = tiny_config(**{"muscle.exchange": exchange})
    full = run_experiment(cfg, tmp_path / "full", progress=False)
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "cut", progress=False, stop_after=1)
    assert not (tmp_path / "cut" / "summary.md").exists()
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.final == full.final
    key = lambda r: (r["method"], r["round"], r["client"])
    a = {key(r): (r["test_metric"], r["cl_loss"], r["task_loss"]) for r in _rows(tmp_path / "full" / "metrics.csv")}
    b = {key(r): (r["test_metric"], r["cl_loss"], r["task_loss"]) for r in _rows(tmp_path / "cut" / "metrics.csv")}
    assert a == b
    with open(tmp_path / "cut" / "events.jsonl") as fh:
        events = [json.loads(line)["event"] for line in fh]
    assert "resume" in events and events[-1] == "run_end"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["muscle_sum", "pairwise"])
def test_run_directory_contents(tmp_path, method):
    cfg = tiny_config(**{"muscle.method": method, "training.rounds": 2})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    d = res.run_dir
    for name in ("config.resolved.yaml", "events.jsonl", "metrics.csv", "summary.md"):
        assert (d / name).is_file(), name
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == sorted([method, "local"])
    rows = _rows(d / "metrics.csv")
    ours = [r for r in rows if r["method"] == method and r["round"] != "final"]
    assert len(ours) == 2 * 3
    assert all(float(r["bytes_sent"]) > 0 and float(r["bytes_received"]) > 0 for r in ours)
    assert all(float(r["cl_steps"]) == 3 for r in ours)  # 96 // 32 batches
    local = [r for r in rows if r["method"] == "local" and r["round"] != "final"]
    assert all(float(r["bytes_sent"]) == 0 for r in local)
    summary = (d / "summary.md").read_text()
    assert "Δ =" in summary and all(c in summary for c in ("a", "b", "c"))
