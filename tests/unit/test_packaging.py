"""The distribution as an organisation installs it: a wheel, not an editable checkout.

An editable install finds every folder of the source tree; a wheel holds only the packages
``pyproject.toml`` lists. ``crypto/``, ``server/`` and ``client/`` are mapped into the
``fedmuscle_secure`` namespace by ``package-dir``, which discovery does not follow, so the
list is explicit and this file checks it against the tree, then builds the wheel, installs
it (without ``-e``) into a fresh virtualenv that borrows this environment's dependencies,
and imports every module and runs the command from it, outside the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
from helpers.paths import REPO as ROOT


def _configured() -> tuple[list[str], dict[str, str]]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(tool["packages"]), dict(tool["package-dir"])


def _tree_packages() -> set[str]:
    """Every package of the source tree, named as the wheel must name it."""
    _, mapping = _configured()
    out = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            out.add(".".join([package, *rel.parts]) if rel.parts else package)
    return out


def test_every_package_of_the_tree_is_listed():
    packages, _ = _configured()
    assert set(packages) == _tree_packages()


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
