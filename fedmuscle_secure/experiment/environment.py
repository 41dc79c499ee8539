"""What a run's numbers depend on beyond its config and seed: library versions and the CPU
instruction set the numeric kernels dispatch to (DESIGN §11).

Two machines given the same config, seed and thread count can train different models:
PyTorch picks its CPU kernels by instruction set (``AVX512`` here, ``AVX2`` elsewhere, each
summing in its own order) and its oneDNN and MKL libraries do the same. Float rounding then
differs in the last bits, and training amplifies that until the final metrics differ.
Library versions can do the same: a different timm initialises or defines a model
differently. The run directory records both, so two runs can be compared knowing whether
they could have agreed.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

#: The distributions whose version can change a run's numbers.
NUMERIC_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "opacus",
                    "dp-accounting", "tenseal", "safetensors", "peft")

#: Environment variables that change which kernels run (ISA caps, thread counts).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_environment() -> dict[str, Any]:
    """Versions, CPU capability and thread count, as JSON-ready values."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": {d: v for d in NUMERIC_PACKAGES if (v := _version(d)) is not None},
        "kernel_variables": {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ},
    }


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two recorded environments that can change results, one phrase
    each (empty when they could reproduce each other)."""
    out = [f"{k}: {a.get(k)} vs {b.get(k)}" for k in ("cpu_capability", "torch_threads")
           if a.get(k) != b.get(k)]
    pa, pb = a.get("packages", {}), b.get("packages", {})
    out += [f"{d}: {pa.get(d)} vs {pb.get(d)}" for d in sorted(set(pa) | set(pb))
            if pa.get(d) != pb.get(d)]
    ka, kb = a.get("kernel_variables", {}), b.get("kernel_variables", {})
    out += [f"${k}: {ka.get(k)} vs {kb.get(k)}" for k in sorted(set(ka) | set(kb))
            if ka.get(k) != kb.get(k)]
    return out
