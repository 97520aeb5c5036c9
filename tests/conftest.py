"""Fixtures shared by the test suite."""

import pytest

from helpers import QUIET, TINY, compose_config


@pytest.fixture
def train_config(tmp_path):
    """compose('train') with tiny data for the given data group and a quiet CPU trainer."""

    def make(*overrides: str, data: str = "synthetic"):
        return compose_config("train", [*QUIET, *TINY[data], *overrides], tmp_path)

    return make
