import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip, with the reason, where CUDA is absent (the only skip allowed)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
