"""What README.md shows runs as shown: its Python example, and the two set-up commands that
.ci/run must use verbatim."""

import re

import torch

from helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_the_python_example_runs_and_gives_the_shapes_its_comments_say():
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["outputs"].shape == (32, 20, 64) and namespace["h_n"].shape == (2, 32, 64)
    assert namespace["logits"].shape == (32, 2)
    ids = namespace["ids"]
    assert ids.shape == (1, 101) and ids.dtype == torch.int64 and int(ids.max()) < 65


def test_ci_runs_the_readmes_test_command_verbatim():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
