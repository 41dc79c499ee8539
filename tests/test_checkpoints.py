"""What a run keeps on disk: ``checkpoint.keep`` round checkpoints per method, the finished
run's checkpoint named ``final``, a crash never leaving none, ``compare`` deleting a finished
cell's checkpoints (its record stays), and the summary naming its time column for what it
holds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny import tiny_config

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.compare.runner import read_marker
from fedmuscle_secure.errors import ConfigError, RunInterrupted
from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.experiment.rundir import FINAL, RunDir
from fedmuscle_secure.experiment.summary import write_summary
from fedmuscle_secure.federation.checks import parse_config


def _names(run: RunDir, method: str) -> list[str]:
    return sorted(p.name for p in run.checkpoint_dir(method).iterdir())


@pytest.mark.parametrize("keep", [0, -1, "two"])
def test_keep_must_be_a_positive_count_and_the_error_names_it(tmp_path, capsys, keep):
    raw = tiny_config().model_dump(mode="json")
    raw["checkpoint"] = {"keep": keep}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.field == "checkpoint.keep"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "checkpoint.keep" in capsys.readouterr().err


def test_keep_and_the_order_of_deletion(tmp_path):
    """``keep`` newest are kept, ``final`` counts as the newest; with ``before`` only the
    rounds before it go (what a deployed client may still be asked for stays)."""
    run = RunDir(tmp_path)
    for r in range(4):
        run.save_checkpoint("m", r, {"r": r}, keep=2)
    assert _names(run, "m") == ["round-0002.pt", "round-0003.pt"]
    run.save_checkpoint("m", FINAL, {"r": "end"}, keep=1)
    assert _names(run, "m") == ["final.pt"]
    assert run.latest_checkpoint("m") == (FINAL, {"r": "end"})
    for r in (5, 6):
        run.save_checkpoint("n", r, {"r": r}, keep=2)
    run.prune_checkpoints("n", 1, before=5)   # round 6's plan has not come: 5 may be needed
    assert run.checkpoint_labels("n") == [5, 6]
    run.prune_checkpoints("n", 1, before=6)
    assert run.checkpoint_labels("n") == [6]


def test_a_crash_while_writing_never_leaves_no_checkpoint(tmp_path, monkeypatch):
    """The new checkpoint is on disk before the old one goes: a crash while writing it (here
    the rename fails) leaves the previous one, which ``latest_checkpoint`` still finds (the
    torn temporary file is ignored); a crash before the deletion leaves both."""
    run = RunDir(tmp_path)
    run.save_checkpoint("m", 1, {"r": 1}, keep=1)

    def crash(*_):
        raise OSError("power lost")

    monkeypatch.setattr("fedmuscle_secure.experiment.rundir.os.replace", crash)
    with pytest.raises(OSError):
        run.save_checkpoint("m", 2, {"r": 2}, keep=1)
    assert run.latest_checkpoint("m") == (1, {"r": 1})
    monkeypatch.undo()
    monkeypatch.setattr(RunDir, "prune_checkpoints", crash)
    with pytest.raises(OSError):
        run.save_checkpoint("m", 2, {"r": 2}, keep=1)
    assert run.checkpoint_labels("m") == [1, 2]


@pytest.mark.slow
def test_run_keeps_one_checkpoint_per_method_by_default_and_resumes_from_it(tmp_path):
    """Before: two per method, the finished run's named round-0003 of a 2-round run. Now
    ``final.pt`` alone; an interrupted run holds its last round's and resumes from it."""
    cfg = tiny_config(**{"training.rounds": 2})
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "r", progress=False, stop_after=1)
    run = RunDir(tmp_path / "r")
    assert _names(run, "muscle") == ["round-0001.pt"]
    run_experiment(cfg, run.root, resume=True, progress=False)
    assert _names(run, "muscle") == _names(run, "local") == ["final.pt"]
    state = torch.load(run.checkpoint_dir("muscle") / "final.pt", weights_only=True)
    assert state["finished"] and [r["round"] for r in state["rows"]][-1] == "final"
    two = run_experiment(cfg.with_overrides(**{"checkpoint.keep": 2, "compare_local": False}),
                         tmp_path / "two", progress=False)
    assert _names(RunDir(two.run_dir), "muscle") == ["final.pt", "round-0002.pt"]


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


def _rows(wall: float) -> list[dict]:
    return [{"method": "muscle", "round": r, "client": c, "bytes_sent": 1e6,
             "bytes_received": 2e6, "wall_time_s": wall} for r in (1, 2) for c in ("a", "b")]


def test_the_summary_names_its_time_column_for_what_it_holds(tmp_path):
    """The simulator's rows hold each client's compute time; a deployed server's hold the
    round's wall time, the same for every client, and must not be called compute."""
    cfg = tiny_config(compare_local=False)
    sim = write_summary(tmp_path / "s.md", cfg, _rows(1.5))
    grpc = write_summary(tmp_path / "g.md", cfg, _rows(1.5), transport="grpc")
    assert "| compute s / round |" in sim and "wall time" not in sim
    assert "compute s / round" not in grpc and "| round wall time s |" in grpc
    assert "| muscle | a | 1.000 | 2.000 | 1.50 |" in grpc
