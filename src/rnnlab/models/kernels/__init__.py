"""Optimisations of the readable definitions in :mod:`rnnlab.models`: nothing here defines
what a model computes, only how fast.

- :mod:`.recurrences`: the Elman, GRU and LSTM cells' ``recur`` over a whole sequence, with
  hand-written backwards (rnnlab's forward + backward at 0.6-0.8x torch.nn.RNN's time on
  2 CPU cores). Must equal the step loop of :mod:`rnnlab.models.cells` and ``torch.nn``.
- :mod:`.matmul`: products by a weight fixed over a sequence through oneDNN's packed
  weights (1.5-3x faster than ``torch.addmm`` at the char and large shapes on the CPU
  measured); ``packed_matmul(False)`` switches them off. Must equal ``torch.addmm``.
- :mod:`.dropout`: the CPU dropout mask from ``torch.rand`` (3x cheaper than
  ``bernoulli_``). Must keep ``nn.Dropout``'s contract.

Each module opens with what it speeds up, by how much, and what it must equal; the tests
hold every fast path to its definition (tests/models/test_cells.py, test_fast_paths.py).
docs/performance.md has the measurements.
"""

from .matmul import packed_matmul

__all__ = ["packed_matmul"]
