"""rnnlab: recurrent neural networks written from scratch in PyTorch, trained with
Lightning and configured with Hydra.

Shape notation used in every docstring and shape comment of the package:

    B  batch size
    T  time steps (sequence length)
    D  input features per step
    H  hidden units per layer
    V  vocabulary size (character models)
    L  number of stacked layers

Tensors are batch-first, (B, T, D), unless a module is built with ``batch_first=False``,
in which case they are time-first, (T, B, D). Recurrent states are always (L, B, H),
as in ``torch.nn.RNN``.
"""

__version__ = "0.1.0"

import importlib.abc
import sys

# Modules renamed when the package was laid out anew: old name -> new name. Importing an old
# name fails with a message naming the new one, instead of a bare ModuleNotFoundError.
RENAMED = {
    "rnnlab.analysis": "rnnlab.analyze",
    "rnnlab.bench": "rnnlab.benchmark (run it with python scripts/benchmark.py)",
    "rnnlab.evaluate": "rnnlab.eval",
    "rnnlab.sweeps": "rnnlab.summarize (sweep summaries) and rnnlab.train.run (one job)",
    "rnnlab.models.cell": "rnnlab.models.cells",
    "rnnlab.models._checks": "rnnlab.checks",
    "rnnlab.models._matmul": "rnnlab.models.kernels.matmul",
}


class _RenamedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in RENAMED:
            raise ModuleNotFoundError(f"{fullname} has moved: use {RENAMED[fullname]}", name=fullname)
        return None


sys.meta_path.append(_RenamedModules())
