"""The CPU dropout mask of :class:`rnnlab.models.Dropout`, drawn with ``torch.rand``.

What it speeds up: ``nn.Dropout`` draws its mask with ``bernoulli_``, which on the CPU goes
through MKL's generator: on the machine the benchmark table was measured on that costs
0.50 ms for a (20, 64, 64) tensor and 12 ms for the char model's (128, 64, 256)
activations, about 3x a uniform draw. ``torch.rand(...) >= p`` is a Bernoulli(1 - p) mask
from the same global generator (``torch.manual_seed`` makes it reproducible in the same
way), kept as bool for backward.

What it must equal: ``nn.Dropout``'s contract, each element zeroed with probability p and
the others scaled by 1 / (1 - p) (tests/models/test_rnn.py).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class MaskedScale(torch.autograd.Function):
    """x * keep / (1 - p) with keep = rand >= p. Inputs: x (any shape), p. Outputs: like x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.rand_like(x) >= p  # bool, in the memory layout of x (as nn.Dropout draws)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.mul(x, keep).mul_(ctx.scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of x (*) with probability p in (0, 1), on the CPU. Outputs: (*)."""
    return MaskedScale.apply(x, p)
