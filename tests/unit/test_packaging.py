"""The distribution as an organisation installs it: a wheel, not an editable checkout.

An editable install finds every folder of the source tree; a wheel holds only the packages
``pyproject.toml`` lists. ``crypto/``, ``server/`` and ``client/`` are mapped into the
``fedmuscle_secure`` namespace by ``package-dir``, which discovery does not follow, so the
list is explicit and this file checks it against the tree; tests/e2e/test_packaging_wheel.py
then builds the wheel, installs it (without ``-e``) into a fresh virtualenv that borrows this
environment's dependencies, and imports every module and runs the command from it, outside
the source tree.
"""

from __future__ import annotations

import tomllib

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
