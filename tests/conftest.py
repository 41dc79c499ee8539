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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Several small models train in one process: on a shared 2-core machine two intra-op
    threads wait on each other (measured 50x slower under load). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
