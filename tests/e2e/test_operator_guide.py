"""The operator's guide runs as written: its walkthrough (docs/operators.md, section 2) is
executed block by block in an empty directory, once per protection mode, with real server
and client processes on 127.0.0.1 (only the mode and the port are substituted)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.operator_guide import walkthrough


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "secagg", "ckks"])
def test_the_walkthrough_runs_as_written(tmp_path, mode):
    script = walkthrough()
    script = re.sub(r"^MODE=plain\b", f"MODE={mode}", script, count=1, flags=re.MULTILINE)
    script = re.sub(r"^PORT=\d+$", f"PORT={_free_port()}", script, count=1, flags=re.MULTILINE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:], logs)
    assert done.stdout.count("audit: OK") == 3, done.stdout[-3000:]
    for org in ("hospital-a", "bank-b", "lab-c"):
        assert (tmp_path / org / "run" / "model" / "final.pt").is_file()
        assert not list((tmp_path / org / "run").rglob("*.key")), "a private key in a run dir"
    assert "ckks" not in {p.name for p in (tmp_path / "server" / "certs").iterdir()} or \
        not (tmp_path / "server" / "certs" / "ckks" / "secret.ctx").exists()
