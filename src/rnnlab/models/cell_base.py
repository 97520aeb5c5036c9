"""What every recurrent cell shares: its two weight layers, their initialisation, the checks
of one step's inputs, and the input projection that :class:`rnnlab.models.RNN` hoists out of
the time loop. The cells themselves are in :mod:`rnnlab.models.cells`."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
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
    recurrent_matrix: bool = True  # False: no ``Whh`` (cells whose gates read x_t only, or element-wise recurrences)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = checks.positive_int("input_size", input_size)
        self.hidden_size = checks.positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.Wxh = nn.Linear(input_size, self.gates * hidden_size, bias=bias)
        if self.recurrent_matrix:
            self.Whh = nn.Linear(hidden_size, self.gates * hidden_size, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform per gate block (each gate is its own (H, D) map), zero biases: the
        # pre-activations start with unit variance, in the non-saturated range.
        for layer in (self.Wxh, self.Whh) if self.recurrent_matrix else (self.Wxh,):
            for block in layer.weight.data.chunk(self.gates, dim=0):
                nn.init.xavier_uniform_(block)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def check_step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        """Raise unless x is (B, D) and every state tensor (B, H), on the weights' dtype and device;
        for an LSTM (``state_size`` 2), unless the state is a tuple (h, c)."""
        if self.state_size == 2 and (not isinstance(state, tuple) or len(state) != 2):
            got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise TypeError(f"expected the LSTM state as a tuple (h, c), got {got}")
        w = self.Wxh.weight
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.input_size:
            got = checks.shape_str(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (B, {self.input_size}), got {got}")
        checks.same_dtype_device("x", x, w)
        for name, s in zip(("h_prev", "c_prev"), state):
            checks.state(name, s, (x.shape[0], self.hidden_size), w)

    def input_bias(self) -> torch.Tensor | None:
        """The biases that simply add to the input projection: b_xh + b_hh, (G*H,) or None."""
        if not self.bias:
            return None
        return self.Wxh.bias + self.Whh.bias if self.recurrent_matrix else self.Wxh.bias

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input projection, hoisted out of the time loop. Inputs: x (..., D). Outputs: (..., G*H)."""
        return linear(x, self.Wxh.weight, self.input_bias())

    def step_projection(self):
        """:meth:`project` for one step of generation, with what does not depend on x paid
        once: a function (B, D) -> (B, G*H)."""
        return partial(F.linear, weight=self.Wxh.weight, bias=self.input_bias())

    def step_recurrence(self):
        """:meth:`recur` for one step of generation, with what can be paid once paid: a
        function (p_t, state) -> state. :meth:`recur` itself for most cells."""
        return self.recur

    def constrain_(self) -> None:
        """Put the parameters back into the set the cell's equations allow (called after
        every optimiser step by the training tasks). Nothing for most cells."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s


def recur_masked(cell: CellBase, projected: torch.Tensor, state: tuple[torch.Tensor, ...],
                 mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Variable lengths: ``cell.recur`` step by step under autograd; a sequence that has ended
    keeps its state.

    Inputs: projected (T, B, G*H); state, each (B, H); mask (T, B, 1), True at valid steps.
    Outputs: outputs (T, B, H), zero past each length; the state at each sequence's last
    valid step.
    """
    outputs = []
    # unbind + one stack at the end, not projected[t] indexing: the backward of a strided
    # slice writes a full-size zero gradient per step (O(T^2) memory traffic).
    for p_t, valid in zip(projected.unbind(0), mask.unbind(0)):  # (B, G*H), (B, 1)
        new = cell.recur(p_t, state)
        state = tuple(torch.where(valid, n, s) for n, s in zip(new, state))
        outputs.append(new[0] * valid)
    return torch.stack(outputs), state  # (T, B, H)
