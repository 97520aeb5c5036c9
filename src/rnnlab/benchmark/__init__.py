"""Benchmarks: rnnlab's RNN, generation and training pipeline against plain PyTorch.

    python scripts/benchmark.py shapes=[seed,char] reps=10 shakespeare=../shared/data/tinyshakespeare.txt

The package is split by concern: :mod:`.timing` (interleaved timing and the result rows),
:mod:`.core` (the RNN against torch.nn), :mod:`.e2e` (generation and training epochs
against bare PyTorch loops), :mod:`.report` (the table), :mod:`.run` (the entry point;
its settings and their defaults are ``conf/benchmark.yaml``).

Every number is a ratio against a reference measured in the same process, the two sides
timed in turn (:mod:`.timing` says how).
Threads are fixed with ``torch.set_num_threads``, tensors are float32, and on CUDA every
timed call is bracketed by ``torch.cuda.synchronize`` (cuDNN's TF32 is switched off for
the run, so torch.nn.RNN computes in float32 like rnnlab). Run it on an otherwise idle
machine: when other processes keep the cores busy, each of the thousands of small
per-step matrix products waits for descheduled threads, and times grow many-fold (the
header records the load average before and after).

Rows, for each shape (B, T, D, H, L) of :data:`SHAPES` and each cell (the default Elman
tanh cell against ``torch.nn.RNN``; GRU and LSTM against ``torch.nn.GRU`` and
``torch.nn.LSTM``), batch_first, with the same weights (``RNN.from_torch``):

- ``forward``: forward pass under ``torch.no_grad``.
- ``backward``: forward + backward: gradients of ``outputs.sum() + h_n.sum()`` with respect
  to the input and every weight.
- ``stepwise``: the same forward + backward, rnnlab's layer-major ``RNN.forward`` against
  the seed's step-by-step loop ``RNN.forward_stepwise`` (the reference here is rnnlab's
  own readable loop, not torch); default cell only.
- ``memory``: memory a forward + backward needs beyond the weights and the input (see
  :func:`saved_bytes` and :func:`cuda_peak_bytes`); deterministic, so measured once.

And three end-to-end rows, independent of the shapes:

- ``generate``: ``CharRNN.generate`` tokens/s against the same sampling loop written with
  ``nn.Embedding``, ``nn.RNN`` and ``nn.Linear`` holding the same weights.
- ``e2e_classifier`` / ``e2e_char``: one training epoch through ``rnnlab.train.train``
  (the code path of ``scripts/train.py``) against a bare PyTorch loop with a
  ``torch.nn.RNN`` model of the same size on the same data; :func:`e2e_note` lists what
  each side does.

Targets (:data:`TARGETS`) are shown with each ratio; the benchmark reports whether they
are met and never fails because of them. The table goes to stdout and to
``benchmark.csv`` and ``benchmark.md`` under ``out``.
"""

from .core import SHAPES, TORCH_MODULES, Shape
from .report import COLUMNS
from .run import run
from .timing import ROWS, TARGETS, Result, make_result

__all__ = ["run", "Shape", "SHAPES", "TORCH_MODULES", "ROWS", "TARGETS", "COLUMNS", "Result", "make_result"]
