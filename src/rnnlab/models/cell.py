"""The Elman RNN cell: one step of the recurrence, written as plainly as possible.

This is the seed article's ``RNNCell``. :class:`rnnlab.models.RNN` stacks these cells
and reads their weights directly in its fast path, so the cell's two ``nn.Linear``
layers are the single source of truth for the parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _checks


class RNNCell(nn.Module):
    r"""An Elman RNN cell with tanh non-linearity.

    .. math::
        h' = \tanh(W_{xh} x + b_{xh} + W_{hh} h + b_{hh})

    Args:
        input_size: number of input features D.
        hidden_size: number of hidden units H.
        bias: if ``False`` the cell has no biases. Default: ``True``.

    Inputs: x, h_prev
        - **x**: (B, D) input at one time step.
        - **h_prev**: (B, H) previous hidden state.

    Outputs: h
        - **h**: (B, H) next hidden state.

    Attributes:
        Wxh: ``nn.Linear(D, H)``, input-to-hidden weight (H, D) and bias (H,).
        Whh: ``nn.Linear(H, H)``, hidden-to-hidden weight (H, H) and bias (H,).

    Weights are Xavier-uniform and biases zero (the seed's choice: Xavier keeps the
    pre-activation variance near one so tanh starts in its linear range).

    Example::

        >>> cell = RNNCell(10, 64)
        >>> h = cell(torch.randn(32, 10), torch.zeros(32, 64))
        >>> h.shape
        torch.Size([32, 64])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.Wxh = nn.Linear(input_size, hidden_size, bias=bias)
        self.Whh = nn.Linear(hidden_size, hidden_size, bias=bias)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.xavier_uniform_(self.Wxh.weight)
        nn.init.xavier_uniform_(self.Whh.weight)
        if self.bias:
            nn.init.zeros_(self.Wxh.bias)
            nn.init.zeros_(self.Whh.bias)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        w = self.Wxh.weight
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected x of shape (B, {self.input_size}), got {_checks.shape_str(x.shape)}")
        _checks.same_dtype_device("x", x, w)
        _checks.state("h_prev", h_prev, (x.shape[0], self.hidden_size), w)
        return torch.tanh(self.Wxh(x) + self.Whh(h_prev))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s
