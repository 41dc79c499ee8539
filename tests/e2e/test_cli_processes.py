"""The CLI's behaviour that needs a real process: Ctrl-C exits 130 saying how to go on (and
ends compare's workers), a reader closing stdout early ends the command quietly (141), and
the installed console script returns the documented exit code. The in-process cases of
every user error are in tests/unit/cli/test_cli_errors.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.audit_fixtures import build_run
from helpers.cli_world import make_world, one_line
from helpers.tiny import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"))


def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fedmuscle_secure.cli.main", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _interrupt_once(proc: subprocess.Popen, started) -> str:
    """SIGINT to ``proc`` once ``started()``; its stderr, after checking it exited 130."""
    t_end = time.monotonic() + 300
    while not started():
        assert proc.poll() is None and time.monotonic() < t_end, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err
    return one_line(err)


def test_ctrl_c_during_run_exits_130_with_the_resume_command(world, tmp_path):
    out = tmp_path / "run"
    proc = _cli("run", world["config"], "--out", out, "--no-progress", "--threads", "1",
                stdout=subprocess.DEVNULL)
    line = _interrupt_once(proc, lambda: (out / "events.jsonl").is_file())  # it started
    assert line.startswith("fedmuscle-secure: interrupted; resume with: ")
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:3] == ["fedmuscle-secure", "run", str(world["config"])]
    assert "--resume" in command and command[command.index("--out") + 1] == str(out)


def test_ctrl_c_during_compare_ends_its_workers_and_says_to_run_it_again(world, tmp_path):
    """The terminal's Ctrl-C reaches every process of the group; here only the parent gets
    it, which must end the workers (before: it waited for their cells to finish, and each
    worker that did get it printed its own traceback)."""
    long = tiny_config(compare_local=False, **{"training.rounds": 10000})  # hours per cell
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long.model_dump(mode="json")))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": "long.yaml", "seeds": [0],
                                    "grids": [{"method": ["muscle"]}]}))
    out = tmp_path / "cmp"
    proc = _cli("compare", grid, "--out", out, "--jobs", "2", "--threads", "1",
                "--no-progress", stdout=subprocess.DEVNULL)
    log = out / "compare.jsonl"

    def workers() -> list[int]:
        return [json.loads(x)["pid"] for x in log.read_text().splitlines()
                if json.loads(x)["event"] == "cell_start"] if log.is_file() else []

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return "zombie" in Path(f"/proc/{pid}/status").read_text()

    try:
        line = _interrupt_once(proc, lambda: bool(workers()))
        assert line.startswith("fedmuscle-secure: interrupted; run it again: "
                               "fedmuscle-secure compare")
        t_end = time.monotonic() + 30
        while not all(gone(p) for p in workers()):
            assert time.monotonic() < t_end, f"workers {workers()} still running"
            time.sleep(0.1)
    finally:
        for pid in workers():  # never leave an hours-long cell behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("argv", [["audit", "{run}", "--json"], ["audit", "{run}"],
                                  ["provision", "list", "--ca", "{ca}", "--json"],
                                  ["compare", "{grid}", "--dry-run"]], ids=" ".join)
def test_a_reader_closing_stdout_early_ends_the_command_quietly(world, tmp_path, argv):
    """``audit --json | head``: the reader is gone before the first write."""
    run = build_run(tmp_path)
    args = [a.format(run=run, ca=world["certs"], grid=world["grid"]) for a in argv]
    proc = _cli(*args, stdout=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_the_console_script_exits_2_naming_a_missing_config(tmp_path):
    """The installed entry point, not ``cli.main``: its exit code and one line."""
    exe = Path(sys.executable).parent / "fedmuscle-secure"
    res = subprocess.run([str(exe), "run", str(tmp_path / "nope.yaml")], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 2
    assert "nope.yaml" in one_line(res.stderr)
