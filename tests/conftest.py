"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convolutions run fastest that way, and on a shared CPU more threads only contend.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
