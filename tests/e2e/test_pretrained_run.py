"""A whole tiny run (the ``run`` command) in which one organisation starts from its own
weights file, named by a path relative to the working directory, with LoRA adapters
(DESIGN §2.5), stopped after its first round and resumed; the resolved config records
both."""

from __future__ import annotations

import csv

import pytest
import yaml

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.config import dump_config
from fedmuscle_secure.errors import RunInterrupted
from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.experiment.rundir import FINAL, RunDir
from fedmuscle_secure.federation.checks import load_config
from helpers.tiny import tiny_config
from helpers.weights import trained_resnet

pytestmark = pytest.mark.slow


def test_a_run_with_a_pretrained_file_and_an_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    trained_resnet(tmp_path / "weights" / "resnet.safetensors")
    cfg = tiny_config(compare_local=False, **{"training.rounds": 2})
    raw = cfg.model_dump(mode="json")
    raw["clients"][0].update(pretrained_file="weights/resnet.safetensors",
                             adapter={"rank": 2, "alpha": 4})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RunInterrupted):  # as a crash after round 1 would
        run_experiment(load_config("tiny.yaml"), "run", progress=False, stop_after=1)
    assert main(["run", "tiny.yaml", "--out", "run", "-q", "--resume"]) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())
    a, b = resolved["clients"][0], resolved["clients"][1]
    assert a["pretrained_file"] == "weights/resnet.safetensors"
    assert a["adapter"] == {"kind": "lora", "rank": 2, "alpha": 4.0, "targets": None,
                            "dropout": 0.0}
    assert not {"pretrained", "pretrained_file", "adapter"} & set(b)  # unset: left out
    label, state = RunDir(tmp_path / "run").latest_checkpoint("muscle")
    assert label == FINAL and any(".lora_A." in k for k in state["clients"]["a"]["model"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["client"] == "a"]
    assert [r["round"] for r in rows] == ["1", "2", "final"]
    assert all(0.0 <= float(r["test_metric"]) <= 1.0 for r in rows)



def test_unset_starting_weights_leave_the_resolved_config_as_it_was():
    """A config without the new keys dumps as before them (resumes and compare's cell
    digests of older runs still match)."""
    text = dump_config(tiny_config())
    assert "pretrained" not in text and "adapter" not in text
