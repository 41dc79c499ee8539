"""Files the CLI's error tests point commands at: a tiny config, a grid, a provisioned CA
folder, an organisation's copied folder, a file where a folder is expected, malformed YAML."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from helpers.deploy_driver import provision
from helpers.tiny import tiny_config


def one_line(err: str) -> str:
    """The single non-empty stderr line (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    return lines[0]


def make_world(root: Path) -> dict[str, Path]:
    """Write the files into ``root``; their paths by name."""
    config = root / "tiny.yaml"
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    grid = root / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": "tiny.yaml", "seeds": [0],
                                    "grids": [{"method": ["muscle"]}]}))
    (root / "a-file").write_text("not a folder\n")
    (root / "bad.yaml").write_text("clients: [\n")
    certs = provision(root)
    # the folder organisation a copies to its host (README "Deployment")
    org_a = root / "org-a-certs"
    (org_a / "identities").mkdir(parents=True)
    shutil.copytree(certs / "ca", org_a / "ca")
    shutil.copytree(certs / "orgs" / "a", org_a / "orgs" / "a")
    shutil.copy(certs / "identities" / "a.key", org_a / "identities")
    for pub in (certs / "identities").glob("*.pub"):
        shutil.copy(pub, org_a / "identities")
    return {"root": root, "config": config, "grid": grid, "file": root / "a-file",
            "bad": root / "bad.yaml", "certs": certs, "org_a": org_a}
