"""Fixtures shared by the test suite."""

import pytest
import torch

from helpers import QUIET, TINY, compose_config


@pytest.fixture
def train_config(tmp_path):
    """compose('train') with tiny data for the given data group and a quiet CPU trainer."""

    def make(*overrides: str, data: str = "synthetic"):
        return compose_config("train", [*QUIET, *TINY[data], *overrides], tmp_path)

    return make


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Train on one thread in the test process: on a small shared machine two threads per
    process spin against each other at every small matmul, many times slower (subprocess
    tests choose their own thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
