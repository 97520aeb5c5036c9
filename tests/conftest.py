"""Fixtures shared by the test suite."""

import json
import os
from pathlib import Path

import pytest
import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.train import train


def pytest_collection_modifyitems(config, items):
    """Under the mutation check (docs/testing.md), run a mutant's tests fastest first, by the
    durations mutmut recorded: it stops at the first failure, and most mutants fail a
    sub-second test long before the ones that train. The default suite keeps its order."""
    stats = Path("mutmut-stats.json")
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", "") or not stats.is_file():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


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


def tiny_train(out, *overrides: str, data: str = "synthetic"):
    """Train in this process on tiny data, outputs under ``out``; (config, metrics)."""
    cfg = compose_config("train", [*QUIET, *TINY[data], *overrides], out)
    metrics, _ = train(cfg)
    return cfg, metrics


@pytest.fixture(scope="session")
def classifier_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a 2-epoch classifier (hidden 16, with a cosine schedule)."""
    out = tmp_path_factory.mktemp("classifier")
    tiny_train(out, "model=classifier", "model.net.hidden_size=16", "trainer.max_epochs=2")
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def char_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a 1-epoch character model on the generated corpus."""
    out = tmp_path_factory.mktemp("char")
    tiny_train(out, "model=char_rnn", "model.net.hidden_size=16", "model.net.num_layers=1", "trainer.max_epochs=1",
               "model.sample_max_new_tokens=20", data="chars")
    return out / "checkpoints" / "last.ckpt"
