"""Dropout with the same contract as ``torch.nn.Dropout``.

In training mode each element is zeroed with probability p and the others are scaled by
1 / (1 - p) (inverted dropout: the expected value is unchanged, and eval mode needs no
rescaling); in eval mode, or with p = 0, it is the identity. On the CPU the mask is drawn
by :mod:`rnnlab.models.kernels.dropout`, about 3x cheaper than ``nn.Dropout``'s; on CUDA,
``F.dropout``'s fused kernel is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from .kernels import dropout as cpu_dropout


class Dropout(nn.Module):
    """Drop-in for ``torch.nn.Dropout(p)``.

    Args:
        p: probability of zeroing an element, in [0, 1).

    Inputs: x of any shape. Outputs: same shape.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = checks.dropout_prob("p", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs: x (*). Outputs: (*)."""
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return cpu_dropout.dropout(x, self.p)  # the same contract, a cheaper mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
