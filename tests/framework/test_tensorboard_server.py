"""The real TensorBoard server reads a run's files: scalars, hparams and text over its HTTP API."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import QUIET, TINY, compose_config
from rnnlab.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_shows_the_run(tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn", "model.net.hidden_size=32",
                                   "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                                   "model.sample_max_new_tokens=40"], tmp_path)
    train(cfg)
    executable = shutil.which("tensorboard") or sys.executable
    args = [] if executable != sys.executable else ["-m", "tensorboard.main"]
    port = _free_port()
    server = subprocess.Popen([executable, *args, "--logdir", str(tmp_path / "tensorboard"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        expected = {"train/loss", "val/loss", "val/bpc", "val/bpc_best", "test/bpc", "lr-Adam"}
        deadline = time.monotonic() + 60
        tags = {}
        while not (len(tags) == 1 and expected <= set(next(iter(tags.values())))):
            # The server loads event files in the background: poll until the run is complete.
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"TensorBoard did not serve {sorted(expected)} within 60 s; last saw {tags}")
            time.sleep(0.5)
            try:
                tags = _get(f"{base}/data/plugin/scalars/tags")
            except OSError:
                pass
        (run,) = tags
        points = _get(f"{base}/data/plugin/scalars/scalars?run={run}&tag=val/bpc")
        assert len(points) == 2  # [wall_time, step, value] per validation epoch
        text_tags = _get(f"{base}/data/plugin/text/tags")
        assert "samples/val/text_summary" in text_tags[run]
        experiment = _get(f"{base}/data/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode())
        assert "model.net.hidden_size" in {h["name"] for h in experiment["hparamInfos"]}
        assert "val/bpc_best" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=10)
