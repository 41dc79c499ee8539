"""Synthetic finished ``compare`` cells (their marker and metrics.csv), written the way the
runner writes them, for the report's and the paired statistics' tests."""

from __future__ import annotations

import json

import yaml

from fedmuscle_secure.experiment.rundir import RunDir
from helpers.tiny import tiny_config

META = {"x": ("resnet10t", "digit10", "accuracy"), "y": ("test_vit", "attributes", "micro_f1")}


def make_cell(out, cid, method, protection, dp, exchange, seed, ref, final, eps=None, wall=10.0):
    d = out / "cells" / cid
    d.mkdir(parents=True)
    rows = []
    for name, metric in final.items():
        model, task, mname = META[name]
        base = {"method": method, "client": name, "model": model, "task": task, "metric": mname}
        rows.append({**base, "round": 1, "test_metric": 0.1, "bytes_sent": 2e6,
                     "bytes_received": 4e6, "wall_time_s": 1.0})
        rows.append({**base, "round": 2, "test_metric": 0.2, "bytes_sent": 4e6,
                     "bytes_received": 4e6, "wall_time_s": 3.0})
        rows.append({**base, "round": "final", "test_metric": metric, "bytes_sent": 0.0,
                     "bytes_received": 0.0, "wall_time_s": 0.5,
                     "eps_record": (eps or {}).get(name, 0.0), "eps_client": 0.0})
    RunDir(d).write_metrics(rows)
    (d / "cell.json").write_text(json.dumps({
        "id": cid, "method": method, "protection": protection, "dp": dp, "exchange": exchange,
        "seed": seed, "ref": ref, "status": "done", "wall_time_s": wall}))


def write_grid(tmp_path, grid, base=None):
    """A grid file over a tiny base config (one round unless ``base`` is given)."""
    base = base or tiny_config(**{"training.rounds": 1}).model_dump(mode="json")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": "base.yaml", **grid}))
    return path
