"""What a run keeps on disk: ``checkpoint.keep`` round checkpoints per method, the finished
run's checkpoint named ``final``, a crash never leaving none, and the summary naming its time
column for what it holds (whole runs and ``compare`` cells: tests/e2e/test_checkpoints_run.py)."""

from __future__ import annotations

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import FINAL, RunDir
from fedmuscle_secure.experiment.summary import write_summary
from fedmuscle_secure.federation.checks import parse_config
from helpers.checkpoints import checkpoint_files
from helpers.tiny import tiny_config


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
    assert checkpoint_files(run, "m") == ["round-0002.pt", "round-0003.pt"]
    run.save_checkpoint("m", FINAL, {"r": "end"}, keep=1)
    assert checkpoint_files(run, "m") == ["final.pt"]
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
