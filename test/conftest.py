"""Shared pytest fixtures."""

import pytest
import torch


def pytest_configure(config):
    # The suite's models are tiny: intra-op threads buy nothing, and under load (a 2-core CI
    # machine, module fixtures that train before any per-test fixture runs) OpenMP spin-waits
    # make torch 10-100x slower. One thread for the whole session.
    torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread, restoring the setting afterwards.

    Tiny nets gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    spin-waits can make them 10-100x slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
