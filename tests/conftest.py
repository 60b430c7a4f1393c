"""Shared test setup. Tests marked `@pytest.mark.cuda` need a GPU: without one they are
skipped with a reason, and the test command prints them (pytest -rs)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Runs a test on the CPU and, where a GPU exists, on CUDA."""
    return torch.device(request.param)
