"""What every recurrent cell shares: its two weight layers, their initialisation, the checks
of one step's inputs, and the input projection that :class:`rnnlab.models.RNN` hoists out of
the time loop. The cells themselves are in :mod:`rnnlab.models.cells`."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .kernels.matmul import linear


class CellBase(nn.Module):
    """A cell with ``gates`` gate blocks: ``Wxh`` = ``nn.Linear(D, gates * H)`` (input to
    hidden) and ``Whh`` = ``nn.Linear(H, gates * H)`` (hidden to hidden), the gates stacked
    in PyTorch's order, so weights copy one-to-one from and to torch.nn's modules.

    Subclasses set ``gates`` and ``state_size`` (1, or 2 for the LSTM's (h, c)) and define
    ``forward`` (one step from x), ``recur`` (one step from the projected input, with
    ``forward(x, s) == recur(project(x), s)``) and ``forward_sequence`` (all T steps).
    """

    gates: int = 1
    state_size: int = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = checks.positive_int("input_size", input_size)
        self.hidden_size = checks.positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.Wxh = nn.Linear(input_size, self.gates * hidden_size, bias=bias)
        self.Whh = nn.Linear(hidden_size, self.gates * hidden_size, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform per gate block (each gate is its own (H, D) map), zero biases: the
        # pre-activations start with unit variance, in the non-saturated range.
        for layer in (self.Wxh, self.Whh):
            for block in layer.weight.data.chunk(self.gates, dim=0):
                nn.init.xavier_uniform_(block)
            if self.bias:
                nn.init.zeros_(layer.bias)

    def check_step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        """Raise unless x is (B, D) and every state tensor (B, H), on the weights' dtype and device."""
        w = self.Wxh.weight
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.input_size:
            got = checks.shape_str(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (B, {self.input_size}), got {got}")
        checks.same_dtype_device("x", x, w)
        for name, s in zip(("h_prev", "c_prev"), state):
            checks.state(name, s, (x.shape[0], self.hidden_size), w)

    def input_bias(self) -> torch.Tensor | None:
        """The biases that simply add to the input projection: b_xh + b_hh, (G*H,) or None."""
        return self.Wxh.bias + self.Whh.bias if self.bias else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input projection, hoisted out of the time loop. Inputs: x (..., D). Outputs: (..., G*H)."""
        return linear(x, self.Wxh.weight, self.input_bias())

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s
