"""Fixtures of the reliability suite: scripts run as real processes, tiny training configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QUIET, ROOT, TINY, compose_config
from rnnlab.train import train

# A classifier run of 10 short epochs (8 steps each), deterministic, on one thread so that
# every process computes the same floating-point sums.
TRAIN_ARGS = ["model=classifier", *TINY["synthetic"], "trainer.max_epochs=10", "trainer.deterministic=true",
              "threads=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]


# The scripts' one-line errors are what is tested: no debug switches from the caller's shell.
ENV = {k: v for k, v in os.environ.items() if k not in ("RNNLAB_DEBUG", "HYDRA_FULL_ERROR")}


def _script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"scripts/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _start_training(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "scripts/train.py", *TRAIN_ARGS, *args, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _tiny_run(out: Path, *overrides: str, data: str = "synthetic"):
    cfg = compose_config("train", [*QUIET, *TINY[data], *overrides], out)
    metrics, _ = train(cfg)
    return cfg, metrics


@pytest.fixture
def script():
    """script(name, *args): run scripts/<name>.py as a user would, from the repository root."""
    return _script


@pytest.fixture
def start_training():
    """start_training(run_dir, *args): scripts/train.py with TRAIN_ARGS as a running process."""
    return _start_training


@pytest.fixture
def tiny_run():
    """tiny_run(out, *overrides, data=...): train in this process on tiny data; (config, metrics)."""
    return _tiny_run


@pytest.fixture
def train_args():
    return list(TRAIN_ARGS)


@pytest.fixture
def result():
    """result(run_dir): the run's result.json."""
    return lambda run_dir: json.loads((Path(run_dir) / "result.json").read_text())


@pytest.fixture(scope="package")
def reference_run(tmp_path_factory):
    """The uninterrupted run that killed and interrupted runs must reproduce; it trains in the
    background while the tests that need it start their own processes."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc, stderr = _start_training(run_dir), []

    def wait() -> Path:
        if proc.returncode is None:
            stderr.append(proc.communicate(timeout=300)[1])
        assert proc.returncode == 0, stderr[0][-3000:]
        return run_dir

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
