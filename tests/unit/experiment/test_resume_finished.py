"""``--resume`` of a run that already finished redoes nothing and reports the same result
(it used to fail comparing the label of the closing checkpoint with the round count)."""

from __future__ import annotations

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.experiment.rundir import RunDir
from helpers.tiny import tiny_config


def test_resuming_a_finished_run_redoes_nothing(tmp_path):
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    first = run_experiment(cfg, tmp_path / "run", progress=False)
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    again = run_experiment(cfg, tmp_path / "run", resume=True, progress=False)
    assert again.final == first.final
    assert (tmp_path / "run" / "metrics.csv").read_text() == metrics
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert events.count('"event": "round_end"') == 1  # no round ran again
    assert len(RunDir(tmp_path / "run").environments()) == 2  # the start and the resume
