"""What whole runs keep on disk: one checkpoint per method by default, resumed from; a
finished ``compare`` cell without its checkpoints but with its record."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.compare.runner import read_marker
from fedmuscle_secure.errors import RunInterrupted
from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.experiment.rundir import RunDir
from helpers.checkpoints import checkpoint_files
from helpers.tiny import tiny_config


@pytest.mark.slow
def test_run_keeps_one_checkpoint_per_method_by_default_and_resumes_from_it(tmp_path):
    """Before: two per method, the finished run's named round-0003 of a 2-round run. Now
    ``final.pt`` alone; an interrupted run holds its last round's and resumes from it."""
    cfg = tiny_config(**{"training.rounds": 2})
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "r", progress=False, stop_after=1)
    run = RunDir(tmp_path / "r")
    assert checkpoint_files(run, "muscle") == ["round-0001.pt"]
    run_experiment(cfg, run.root, resume=True, progress=False)
    assert checkpoint_files(run, "muscle") == checkpoint_files(run, "local") == ["final.pt"]
    state = torch.load(run.checkpoint_dir("muscle") / "final.pt", weights_only=True)
    assert state["finished"] and [r["round"] for r in state["rows"]][-1] == "final"
    two = run_experiment(cfg.with_overrides(**{"checkpoint.keep": 2, "compare_local": False}),
                         tmp_path / "two", progress=False)
    assert checkpoint_files(RunDir(two.run_dir), "muscle") == ["final.pt", "round-0002.pt"]


@pytest.mark.slow
def test_compare_deletes_a_finished_cells_checkpoints_and_keeps_its_record(tmp_path, capsys):
    """A finished cell keeps config, metrics, events, summary and ledgers, not the models and
    optimizer states; a re-run still skips it (and deletes checkpoints a stop right after
    its marker left behind)."""
    base = tiny_config(**{"training.rounds": 1}).model_dump(mode="json")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": "tiny.yaml", "seeds": [0],
                                    "grids": [{"method": ["muscle"]}]}))
    out = tmp_path / "out"
    common = [str(grid), "--out", str(out), "--jobs", "1", "--no-progress", "--json"]
    assert main(["compare", *common]) == 0
    capsys.readouterr()
    cells = sorted(p for p in (out / "cells").iterdir())
    assert [c.name for c in cells] == ["local__none__s0", "muscle__plain__none__per_batch__s0"]
    for cell in cells:
        assert read_marker(cell)["status"] == "done"
        assert not (cell / "checkpoints").exists()
        for name in ("config.resolved.yaml", "metrics.csv", "events.jsonl", "summary.md"):
            assert (cell / name).is_file(), (cell.name, name)
    assert (cells[1] / "ledger" / "a.jsonl").is_file() and (cells[1] / "receipts.jsonl").is_file()
    log = [json.loads(x) for x in (out / "compare.jsonl").read_text().splitlines()]
    freed = {e["cell"]: e["bytes"] for e in log if e["event"] == "cell_checkpoints_deleted"}
    assert sorted(freed) == [c.name for c in cells] and all(b > 0 for b in freed.values())

    left = RunDir(cells[1])
    left.save_checkpoint("muscle", 1, {"r": 1})   # as if stopped right after its marker
    assert main(["compare", *common]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["done"] == [] and sorted(info["skipped"]) == [c.name for c in cells]
    assert not left.checkpoints.exists()

