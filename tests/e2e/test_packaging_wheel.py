"""The built wheel installs into a fresh virtualenv and runs outside the source tree (the
package list it is built from is checked against the tree in tests/unit/test_packaging.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from helpers.paths import REPO as ROOT


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    dist, src = tmp_path / "dist", tmp_path / "src"
    # build from the committed files only: a build/ folder left in the checkout would
    # smuggle stale packages into the wheel
    files = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True,
                           cwd=ROOT).stdout.decode().split("\0")
    for name in filter(None, files):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(dist), str(src)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("fedmuscle_secure-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # borrow this environment's dependencies (torch, grpcio, ...) without its editable
    # install: a path line in a .pth file adds the folder, its own .pth files are not run
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, cwd=tmp_path)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    imports = subprocess.run([str(python), "-c", """
import importlib, pkgutil, fedmuscle_secure
assert 'site-packages' in fedmuscle_secure.__file__, fedmuscle_secure.__file__
names = [m.name for m in pkgutil.walk_packages(fedmuscle_secure.__path__, 'fedmuscle_secure.')
         if not m.name.endswith('__main__')]  # the command itself, run below
for name in names:
    importlib.import_module(name)
print(len(names))
"""], check=True, capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert int(imports.stdout.split()[-1]) >= 60  # every module, the mapped packages included
    version = subprocess.run([str(env_dir / "bin" / "fedmuscle-secure"), "--version"], check=True,
                             capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert version.stdout.strip().startswith("fedmuscle-secure ")
    assert "unknown" not in version.stdout
    as_module = subprocess.run([str(python), "-m", "fedmuscle_secure", "--version"], check=True,
                               capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert as_module.stdout == version.stdout
    run_help = subprocess.run([str(env_dir / "bin" / "fedmuscle-secure"), "run", "--help"],
                              check=True, capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert "usage: fedmuscle-secure run" in run_help.stdout

