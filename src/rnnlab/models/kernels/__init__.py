"""Optimisations of the readable definitions in :mod:`rnnlab.models`: nothing here defines
what a model computes, only how fast.

- :mod:`.recurrences`: the Elman, GRU and LSTM cells' ``recur`` over a whole sequence, with
  hand-written backwards; the entry points the cells call. Must equal the step loop of
  :mod:`rnnlab.models.cells` and ``torch.nn``.
- :mod:`.compiled` (``csrc/recurrences.cpp``): the same loops in C++, built on first use,
  one product and one vectorised pass per step, variable lengths included; where they
  cannot be built the Python loops of :mod:`.recurrences` run. Must equal those loops.
- :mod:`.matmul`: products by a weight fixed over a sequence through oneDNN's packed
  weights, where timed faster than ``torch.addmm`` (1.5-3x on an AMD EPYC, up to 1.3x on
  an Intel Xeon with AVX-512); ``packed_matmul(False)`` switches them off. Must equal
  ``torch.addmm``.
- :mod:`.dropout`: the CPU dropout mask from ``torch.rand`` (3x cheaper than
  ``bernoulli_``). Must keep ``nn.Dropout``'s contract.

Each module opens with what it speeds up, by how much, and what it must equal; the tests
hold every fast path to its definition (tests/models/test_cells.py, test_fast_paths.py,
test_compiled.py).
docs/performance.md has the measurements.
"""

from .compiled import compiled_loops
from .matmul import packed_matmul

__all__ = ["packed_matmul", "compiled_loops"]
