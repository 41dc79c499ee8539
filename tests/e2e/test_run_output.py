"""What ``run`` prints while it goes: one plain line per round (r/R, the whole run's count,
rate and ETA) when stdout is not a terminal, never a carriage return; one bar over every
method (the local reference included) with the batch of the current phase on a terminal;
--quiet and -v. Whole runs of the tiny config; the display's pieces are in
tests/unit/console/test_progress.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.console.rounds import RunProgress
from fedmuscle_secure.experiment.run import methods_of, run_experiment
from helpers.terminal import CLEAR, Terminal
from helpers.tiny import tiny_config

pytestmark = pytest.mark.slow

ROUND_LINE = re.compile(r"^(\w+) round (\d+)/(\d+)  .*run (\d+)/(\d+) rounds .*ETA ", re.MULTILINE)


def _config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**over).model_dump(mode="json")))
    return path


def test_run_prints_one_plain_line_per_round_without_carriage_returns(tmp_path, capsys):
    config = _config(tmp_path, **{"training.rounds": 2})
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert "\r" not in out.out and "\r" not in out.err
    lines = ROUND_LINE.findall(out.out)
    # every method's rounds, the local reference included, counted over the whole run
    assert [(m, int(r), int(n), int(k), int(t)) for m, r, n, k, t in lines] == [
        ("muscle", 1, 2, 1, 4), ("muscle", 2, 2, 2, 4), ("local", 1, 2, 3, 4),
        ("local", 2, 2, 4, 4)]
    assert re.search(r"^muscle final  a=\d\.\d{3} b=", out.out, re.MULTILINE)
    assert re.search(r"^local final  a=", out.out, re.MULTILINE)
    assert "s/round" in out.out and "Run directory:" in out.out


def test_quiet_prints_only_the_result_and_verbose_every_phase(tmp_path, capsys):
    config = _config(tmp_path, compare_local=False, **{"training.rounds": 1})
    assert main(["run", str(config), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert not ROUND_LINE.search(quiet) and "round 1/1" not in quiet
    assert "Run directory:" in quiet and "muscle {" in quiet  # the result is still printed
    assert main(["run", str(config), "--out", str(tmp_path / "verbose"), "-v"]) == 0
    verbose = capsys.readouterr().out
    assert "\r" not in verbose and len(ROUND_LINE.findall(verbose)) == 1
    # each phase of the round as a line, with its position
    assert re.search(r"^muscle round 1/1: local update a \(1/3\)$", verbose, re.MULTILINE)
    assert re.search(r"^muscle round 1/1: exchange epoch 1/1, batch 3/3$", verbose, re.MULTILINE)


def test_on_a_terminal_one_bar_covers_every_method_and_shows_the_batch(tmp_path):
    cfg = tiny_config(**{"training.rounds": 1})
    screen = Terminal()
    display = RunProgress(cfg, methods_of(cfg), stream=screen)
    run_experiment(cfg, tmp_path / "run", progress=display)
    display.close()  # the caller's display: it takes the bar off
    text = screen.getvalue()
    bars = [piece for piece in text.split(CLEAR) if piece.startswith("tiny [")]
    assert any("0/2 rounds" in b and "muscle round 1/1: exchange epoch 1/1, batch 2/3" in b
               for b in bars)
    assert any("1/2 rounds" in b and "local round 1/1: local update" in b for b in bars)
    # the round lines are still there, each on its own line, with the bar taken off first
    assert len(ROUND_LINE.findall(text.replace(CLEAR, "\n"))) == 2
    assert text.endswith(CLEAR)
