"""A run records what its numbers depend on beyond config and seed (DESIGN §11): library
versions and the CPU capability, once per start or resume; the compare report says when
its cells ran in different environments."""

from __future__ import annotations

import json
from importlib import metadata

import torch

from fedmuscle_secure.compare.report import write_report
from fedmuscle_secure.experiment.environment import environment_differences, software_environment
from fedmuscle_secure.experiment.rundir import RunDir
from helpers.compare_cells import make_cell


def test_the_environment_names_versions_and_the_cpu_capability(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    env = software_environment()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["packages"]["torch"] == metadata.version("torch")
    assert env["packages"]["timm"] == metadata.version("timm")
    assert env["kernel_variables"]["ATEN_CPU_CAPABILITY"] == "avx2"
    json.dumps(env)  # JSON-ready


def test_differences_name_what_changed():
    a = {"cpu_capability": "AVX512", "torch_threads": 1, "packages": {"torch": "2", "timm": "1"}}
    b = {"cpu_capability": "AVX2", "torch_threads": 1, "packages": {"torch": "2", "timm": "1.1"},
         "kernel_variables": {"DNNL_MAX_CPU_ISA": "AVX2"}}
    assert environment_differences(a, b) == ["cpu_capability: AVX512 vs AVX2",
                                              "timm: 1 vs 1.1", "$DNNL_MAX_CPU_ISA: None vs AVX2"]
    assert environment_differences(a, dict(a)) == []


def test_each_start_appends_an_entry(tmp_path):
    run = RunDir(tmp_path)
    assert run.environments() == []
    run.record_environment({"cpu_capability": "AVX512"})
    run.record_environment({"cpu_capability": "AVX2"})
    assert [e["cpu_capability"] for e in run.environments()] == ["AVX512", "AVX2"]


def test_the_report_says_when_cells_ran_in_different_environments(tmp_path):
    for s, cap in ((0, "AVX512"), (1, "AVX2")):
        make_cell(tmp_path, f"local__none__s{s}", "local", "plain", "none", "-", s, None,
                  {"x": 0.5, "y": 0.4})
        make_cell(tmp_path, f"m__plain__none__e__s{s}", "m", "plain", "none", "e", s,
                  f"local__none__s{s}", {"x": 0.55, "y": 0.42})
        for cell in (f"local__none__s{s}", f"m__plain__none__e__s{s}"):
            RunDir(tmp_path / "cells" / cell).record_environment(
                {"cpu_capability": cap, "torch_threads": 1, "packages": {"torch": "2.14.1"}})
    write_report(tmp_path, "envs")
    md = (tmp_path / "results.md").read_text()
    assert "ran in more than one environment" in md and "cpu_capability: AVX512 vs AVX2" in md
