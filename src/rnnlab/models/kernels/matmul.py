"""Products by a weight that stays fixed over a whole sequence: the recurrent W_hh, and the
hoisted input projection W_xh.

Every step of a recurrence multiplies a (B, K) state by the same (K, N) matrix. On the
CPU, ``torch.addmm`` calls the BLAS PyTorch was built with (MKL in the official x86
wheels), which reads the weight in its plain layout at every call. oneDNN, which PyTorch
also ships, can reorder ("pack") a weight once into the blocked layout its kernels read;
the T steps of a sequence then reuse the packed weight. For the products of the char and
large benchmark shapes this is 1.5-3x faster than ``addmm`` on the AMD EPYC machine the
benchmark table was measured on (where MKL does not use its widest kernels); on CPUs where
the BLAS already runs at full speed the gain is smaller. Each packed call has a fixed cost
of about 15 us, so small products (the seed shape, generation at batch 1) stay on ``addmm``.

The hoisted input projection, one (T*B, D) x (D, G*H) product per layer, gains in the
same way (:func:`linear`; its backward is written out in :class:`PackedLinear`).

Only float32 CPU tensors, with oneDNN available, take the packed path; float64, CUDA and
builds without oneDNN use ``torch.addmm``. Results must equal ``addmm`` / ``F.linear`` up to
the order of floating-point summation (tests/models/test_fast_paths.py checks both paths
against torch.nn in float32). ``packed_matmul(False)`` switches packing off, for example to
measure what it brings::

    from rnnlab.models import packed_matmul

    with packed_matmul(False):
        outputs, h_n = rnn(x)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# A product of B x K x N multiply-adds at or above this size is worth its packed call's
# fixed cost (measured on an AMD EPYC: (64, 128) x (128, 512) and (64, 256) x (256, 256) run
# 1.5x faster packed; (64, 128) x (128, 128) runs 1.2x slower).
MIN_PACKED_MACS = 2**21
# A one-off product (the hoisted input projection) also pays for packing its weight and
# for a new oneDNN primitive, about 100 us: worth it from about 2^25 multiply-adds
# (measured: (2560, 64) x (64, 256) forward + backward 1.2x faster; (1280, 64) x (64, 256) even).
MIN_PACKED_LINEAR_MACS = 2**25

_enabled: bool | None = None  # None: where timed faster (see _packing_pays)


@contextlib.contextmanager
def packed_matmul(enabled: bool) -> Iterator[None]:
    """Within the block, use oneDNN's packed weights for every product above the size
    thresholds (``True``), or never (``False``). Outside, step products use them where they
    were timed faster on this machine."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def _available() -> bool:
    """Whether this PyTorch build has oneDNN's packed product (private ops, used by
    torch.compile's CPU backend) and it computes x @ w.t() + add; else everything uses addmm."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.arange(32, dtype=torch.float32).view(8, 4) / 32  # no random numbers: the
        x = torch.arange(8, dtype=torch.float32).view(2, 4) / 8  # global generator stays as it is
        add = torch.ones(2, 8)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        y = torch.ops.mkldnn._linear_pointwise.binary(x, add, packed, None, "add")
        z = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return torch.allclose(y, torch.addmm(add, x, w.t())) and torch.allclose(z, x @ w.t())
    except (AttributeError, RuntimeError, TypeError):
        return False


_AVAILABLE = _available()


def _packable(weight: torch.Tensor, rows: int, min_macs: int = MIN_PACKED_MACS) -> bool:
    # Not under CPU autocast: the products must then run in autocast's dtype (F.linear does).
    if not (_enabled is not False and _AVAILABLE and weight.device.type == "cpu" and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and rows * weight.numel() >= min_macs):
        return False
    if _enabled is True or min_macs != MIN_PACKED_MACS or torch.are_deterministic_algorithms_enabled():
        return True  # asked for, a one-off projection, or a deterministic run (which must not depend on timings)
    return _packing_pays(weight.shape[0], weight.shape[1], rows)


# Whether a step product runs faster packed depends on the CPU and on the shape, not only on
# its size: on an AMD EPYC the char and large products run 1.5-3x faster packed; on an Intel
# Xeon with AVX-512, where MKL runs its widest kernels, the char shape's (64, 256) x (256, 1024)
# runs 10% slower packed and the large shape's (32, 512) x (512, 2048) 1.3x faster. So each
# process times both, once per (rows, K, N, threads), on fixed inputs (a few milliseconds),
# and keeps the faster: torch.backends.cudnn.benchmark's approach. The two differ only in
# the order of summation; deterministic runs skip the timing and pack by size alone.
_timed: dict[tuple[int, int, int, int], bool] = {}


def _packing_pays(n: int, k: int, rows: int) -> bool:
    key = (rows, k, n, torch.get_num_threads())
    if key not in _timed:
        g = torch.Generator().manual_seed(0)  # not the global generator: timing must not change a run's numbers
        weight, x, add = (torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g),
                          torch.randn(rows, n, generator=g))
        packed, weight_t = _pack(weight, rows), weight.t()

        def plain():
            torch.addmm(add, x, weight_t, out=add)  # what the compiled loops run: in place

        def onednn():
            add.copy_(torch.ops.mkldnn._linear_pointwise.binary(x, add, packed, None, "add"))

        times = {plain: [], onednn: []}
        for _ in range(7):  # interleaved; the best of each after a warm-up
            for run in (plain, onednn):
                start = time.perf_counter()
                run()
                times[run].append(time.perf_counter() - start)
        _timed[key] = min(times[onednn][1:]) < min(times[plain][1:])
    return _timed[key]


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def packed_weight(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """oneDNN's packed copy of ``weight`` (N, K) for products with ``rows`` rows, where that is
    faster than ``addmm`` (the rule :class:`StepWeight` follows); else None."""
    return _pack(weight, rows) if _packable(weight, rows) else None


class StepWeight:
    """Right-multiplication by one fixed weight, many times: ``x @ weight.t() (+ add)``.

    Args:
        weight: (N, K), in ``nn.Linear``'s layout (it maps K features to N).
        batch_size: the number of rows B of every x it will multiply.
        bias: (N,) added to every product, or None.

    Call: x (B, K) contiguous, add (B, N) contiguous or None. Returns x @ weight.t() + bias
    + add, (B, N), a new tensor.
    """

    def __init__(self, weight: torch.Tensor, batch_size: int, bias: torch.Tensor | None = None):
        self.weight_t, self.bias = weight.t(), bias  # (K, N), (N,)
        self.packed = packed_weight(weight, batch_size)

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed is None:
            if add is None:
                return torch.mm(x, self.weight_t) if self.bias is None else torch.addmm(self.bias, x, self.weight_t)
            y = torch.addmm(add, x, self.weight_t)
            return y if self.bias is None else y.add_(self.bias)
        if add is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.packed, self.bias, "add")


class PackedLinear(torch.autograd.Function):
    """``F.linear`` for a 2-D input through oneDNN's packed product, with its backward.

    Inputs: x (M, K), weight (N, K), bias (N,) or None. Outputs: (M, N).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, _pack(weight, x.shape[0]), bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad (M, N) x weight (N, K), weight.t() packed as a linear's weight
            grad_x = torch.ops.mkldnn._linear_pointwise(grad, _pack(weight.t(), x.shape[0]), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ x  # (N, M) x (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; large float32 CPU products go through :class:`PackedLinear`.

    Inputs: x (..., K), weight (N, K), bias (N,) or None. Outputs: (..., N).
    """
    rows = x.numel() // max(x.shape[-1], 1)
    if not _packable(weight, rows, MIN_PACKED_LINEAR_MACS) or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    if x.dim() == 2:
        return PackedLinear.apply(x, weight, bias)  # (M, N), not a view
    y = PackedLinear.apply(x.reshape(rows, x.shape[-1]), weight, bias)  # (M, N)
    return y.view(*x.shape[:-1], weight.shape[0])
