"""Stopping ``fedmuscle-secure compare`` from outside (DESIGN §7): a ``kill`` (SIGTERM) or a
``kill -9`` of the parent ends its workers too. A worker left behind would go on computing
its cell with the code it loaded and write it into the grid's directory, where a later run
takes it for a finished cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.tiny import tiny_config


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(p)
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc: Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_compare_ends_its_workers(tmp_path, sig):
    base = tiny_config(**{"training.rounds": 40}).model_dump(mode="json")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "stopgrid", "base": "tiny.yaml", "seeds": [0, 1],
                                    "grids": [{"method": ["muscle"]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "fedmuscle_secure", "compare", str(grid),
                             "--out", str(tmp_path / "out"), "--jobs", "2", "--threads", "1",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the pool's workers (and its resource tracker)
        cells = list((tmp_path / "out" / "cells").glob("*/events.jsonl"))
        workers = _children(proc.pid)
        if len(cells) >= 2 and len(workers) >= 2:
            break
        time.sleep(0.5)
    assert len(workers) >= 2, "the workers never started"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(workers), f"workers left running after {sig.name}"
    if sig == signal.SIGTERM:  # said why it stopped, with the interrupted exit code
        assert proc.returncode == 130 and b"interrupted" in err
