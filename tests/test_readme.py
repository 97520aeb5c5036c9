"""What README.md shows runs as shown: its Python example, and the two set-up commands that
.ci/run must use verbatim."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from rnnlab.checkpoints import load_checkpoint

from helpers import ROOT

README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    """README's text under ``## heading``, up to the next section."""
    return README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_python_example_runs_and_gives_the_shapes_its_comments_say():
    (example,) = blocks(section("Using the models directly"), "python")
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["outputs"].shape == (32, 20, 64) and namespace["h_n"].shape == (2, 32, 64)
    assert namespace["logits"].shape == (32, 2)
    ids = namespace["ids"]
    assert ids.shape == (1, 101) and ids.dtype == torch.int64 and int(ids.max()) < 65


def test_ci_runs_the_readmes_test_command_verbatim():
    test_command = next(line for block in blocks(README, "bash") for line in block.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.subprocess
def test_the_own_data_example_trains_with_the_sizes_its_module_gives(tmp_path):
    text = section("Your own data")
    (module,), (config,) = blocks(text, "python"), blocks(text, "yaml")
    (command,) = [line for block in blocks(text, "bash") for line in block.splitlines()
                  if "scripts/train.py" in line and "hydra.searchpath" in line]
    (tmp_path / "mydata.py").write_text(module)
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "sines.yaml").write_text(config)
    # The README's overrides, with $PWD the directory that holds the user's files.
    args = shlex.split(command.split("scripts/train.py", 1)[1].replace("$PWD", str(tmp_path)))
    assert command.startswith("PYTHONPATH=$PWD python scripts/train.py")
    run_dir = tmp_path / "run"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "scripts/train.py", *args, "trainer.max_epochs=4",
                           f"hydra.run.dir={run_dir}",
                           "trainer.enable_progress_bar=false"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((run_dir / "result.json").read_text())
    assert recorded["status"] == "ok" and recorded["metrics"]["test/acc"] > 0.8  # 4 classes: chance 0.25
    net = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]["net"]
    assert (net["input_size"], net["num_classes"]) == (3, 4)  # from the module's model_settings()
