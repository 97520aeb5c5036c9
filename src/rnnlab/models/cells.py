"""Recurrent cells: one step of the recurrence, the readable definition.

``RNNCell`` is the seed article's Elman cell (tanh, or ReLU on request); ``GRUCell`` and
``LSTMCell`` are the gated cells, written the same way. ``forward`` is one step. ``project``
and ``recur`` are the same step cut in two: the input projection, which does not depend on
the previous state (so :class:`rnnlab.models.RNN` computes it for all T steps in one
product), and the recurrent rest. ``forward_sequence`` runs ``recur`` over a whole
sequence; it hands that loop to a hand-written kernel (:mod:`rnnlab.models.kernels`), an
optimisation that the tests hold equal to ``recur`` step by step and to ``torch.nn``.
States are tuples: ``(h,)`` for the Elman and GRU cells, ``(h, c)`` for the LSTM.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .cell_base import CellBase, recur_masked
from .kernels import compiled, recurrences
from .modern_cells import IndRNNCell, LayerNormLSTMCell, MinGRUCell, MinLSTMCell


class RNNCell(CellBase):
    r"""An Elman RNN cell.

    .. math::
        h' = \sigma(W_{xh} x + b_{xh} + W_{hh} h + b_{hh}), \quad \sigma = \tanh \text{ or ReLU}

    Args:
        input_size: number of input features D.
        hidden_size: number of hidden units H.
        bias: if ``False`` the cell has no biases. Default: ``True``.
        nonlinearity: ``"tanh"`` or ``"relu"``. Default: ``"tanh"``.

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

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        checks.one_of("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self.check_step(x, (h_prev,))
        pre = self.Wxh(x) + self.Whh(h_prev)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, H) = :meth:`project` of x_t; state (h (B, H),).

        Outputs: (h' (B, H),).
        """
        pre = torch.addmm(p_t, state[0], self.Whh.weight.t())  # (B, H)
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], mask: torch.Tensor | None = None):
        """:meth:`recur` over every step of ``x``.

        Inputs: x (T, B, D); state (h0 (B, H),); mask (T, B, 1), True at valid steps, or None.
        Outputs: outputs (T, B, H), zero past each sequence's length; (h (B, H),) at each
        sequence's last valid step.
        """
        projected = self.project(x.reshape(-1, x.shape[-1]))  # (T*B, H): one product for all steps
        if mask is not None and not recurrences.takes_masks(projected, state[0], 1):
            return recur_masked(self, projected.view(*x.shape[:2], -1), state, mask)
        # Fast path, an optimisation of the loop over recur: kernels/recurrences.py.
        return recurrences.elman(projected, state[0], self.Whh.weight, relu=self.nonlinearity == "relu", mask=mask)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class GRUCell(CellBase):
    r"""A gated recurrent unit (Cho et al., 2014), in PyTorch's formulation.

    .. math::
        r &= \sigma(W_{xr} x + b_{xr} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{xz} x + b_{xz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{xn} x + b_{xn} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    Args, inputs and outputs as :class:`RNNCell` (no ``nonlinearity``).

    Attributes:
        Wxh: ``nn.Linear(D, 3H)``, the r, z, n input maps stacked in that order.
        Whh: ``nn.Linear(H, 3H)``, the r, z, n hidden maps stacked in that order.
    """

    gates = 3

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self.check_step(x, (h_prev,))
        x_r, x_z, x_n = self.Wxh(x).chunk(3, dim=1)  # each (B, H)
        h_r, h_z, h_n = self.Whh(h_prev).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h_prev

    def input_bias(self) -> torch.Tensor | None:
        """b_xh + (b_hr, b_hz, 0), (3H,) or None: b_hn sits inside r * (.), so it stays in the loop."""
        if not self.bias:
            return None
        H = self.hidden_size
        return self.Wxh.bias + torch.cat([self.Whh.bias[:2 * H], self.Whh.bias.new_zeros(H)])

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 3H) = :meth:`project` of x_t; state (h (B, H),).

        Outputs: (h' (B, H),).
        """
        (h,), H = state, self.hidden_size
        hh = h @ self.Whh.weight.t()  # (B, 3H)
        rz = torch.sigmoid(p_t[:, :2 * H] + hh[:, :2 * H])  # (B, 2H)
        r, z = rz[:, :H], rz[:, H:]
        h_n = hh[:, 2 * H:] + self.Whh.bias[2 * H:] if self.bias else hh[:, 2 * H:]
        n = torch.tanh(p_t[:, 2 * H:] + r * h_n)  # (B, H)
        return (n + z * (h - n),)  # = (1 - z) n + z h, one operation fewer

    def step_recurrence(self):
        """:meth:`recur` for one step of generation: where the compiled loops run and no
        gradient is wanted, one C++ call (the compiled GRU loop over one step) instead of
        about eight ATen calls, a visible share of a batch-1 step; else :meth:`recur`."""
        ext = compiled.usable(self.Whh.weight)
        if ext is None:
            return self.recur
        w_hh, H = self.Whh.weight.contiguous(), self.hidden_size
        b_hn = self.Whh.bias[2 * H:].contiguous() if self.bias else None

        def recur(p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
            if torch.is_grad_enabled():
                return self.recur(p_t, state)
            steps = ext.gru_forward(p_t.unsqueeze(0).contiguous(), state[0].contiguous(), w_hh, None, b_hn, None,
                                    False)[0]  # (1, B, H)
            return (steps[0],)

        return recur

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`."""
        b_hn = self.Whh.bias[2 * self.hidden_size:] if self.bias else None
        if recurrences.projects_in_loop(x, *self.parameters()):  # inference: one call, no (T, B, 3H) temporary
            return recurrences.gru_inference(x, self.Wxh.weight, self.input_bias(), state[0], self.Whh.weight, b_hn,
                                             mask)
        projected = self.project(x.reshape(-1, x.shape[-1]))  # (T*B, 3H)
        if mask is not None and not recurrences.takes_masks(projected, state[0], 3):
            return recur_masked(self, projected.view(*x.shape[:2], -1), state, mask)
        return recurrences.gru(projected, state[0], self.Whh.weight, b_hn, mask)  # fast path: kernels/recurrences.py


class LSTMCell(CellBase):
    r"""A long short-term memory cell (Hochreiter & Schmidhuber, 1997), in PyTorch's formulation.

    .. math::
        i &= \sigma(W_{xi} x + b_{xi} + W_{hi} h + b_{hi}) \\
        f &= \sigma(W_{xf} x + b_{xf} + W_{hf} h + b_{hf}) \\
        g &= \tanh(W_{xg} x + b_{xg} + W_{hg} h + b_{hg}) \\
        o &= \sigma(W_{xo} x + b_{xo} + W_{ho} h + b_{ho}) \\
        c' &= f \odot c + i \odot g, \quad h' = o \odot \tanh(c')

    Inputs: x, (h_prev, c_prev), each (B, D) / (B, H). Outputs: (h, c), each (B, H).

    Attributes:
        Wxh: ``nn.Linear(D, 4H)``, the i, f, g, o input maps stacked in that order.
        Whh: ``nn.Linear(H, 4H)``, the i, f, g, o hidden maps stacked in that order.

    The forget-gate bias starts at 1 (split over ``Wxh`` and ``Whh``), so the cell begins
    by remembering: Jozefowicz et al., 2015, "An Empirical Exploration of Recurrent
    Network Architectures".
    """

    gates = 4
    state_size = 2

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias:
            H = self.hidden_size
            nn.init.constant_(self.Wxh.bias[H:2 * H], 0.5)
            nn.init.constant_(self.Whh.bias[H:2 * H], 0.5)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """Inputs: x (B, D), state (h_prev (B, H), c_prev (B, H)). Outputs: (h, c), each (B, H)."""
        self.check_step(x, state)
        h_prev, c_prev = state
        i, f, g, o = (self.Wxh(x) + self.Whh(h_prev)).chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 4H) = :meth:`project` of x_t; state (h, c), each (B, H).

        Outputs: (h', c'), each (B, H).
        """
        h, c = state
        i, f, g, o = torch.addmm(p_t, h, self.Whh.weight.t()).chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                         mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`, with state (h, c)."""
        if recurrences.projects_in_loop(x, *self.parameters()):  # inference: one call, no (T, B, 4H) temporary
            return recurrences.lstm_inference(x, self.Wxh.weight, self.input_bias(), *state, self.Whh.weight, mask)
        projected = self.project(x.reshape(-1, x.shape[-1]))  # (T*B, 4H)
        if mask is not None and not recurrences.takes_masks(projected, state[0], 4):
            return recur_masked(self, projected.view(*x.shape[:2], -1), state, mask)
        return recurrences.lstm(projected, *state, self.Whh.weight, mask)  # fast path: kernels/recurrences.py


CELLS = {"rnn_tanh": (RNNCell, {"nonlinearity": "tanh"}), "rnn_relu": (RNNCell, {"nonlinearity": "relu"}),
         "gru": (GRUCell, {}), "lstm": (LSTMCell, {}),
         "min_gru": (MinGRUCell, {}), "min_lstm": (MinLSTMCell, {}), "indrnn": (IndRNNCell, {}),
         "ln_lstm": (LayerNormLSTMCell, {})}
TORCH_CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")  # the cells torch.nn.RNN / GRU / LSTM also have


def make_cell(cell: str, input_size: int, hidden_size: int, bias: bool = True,
              options: dict | None = None) -> CellBase:
    """Build the cell named ``cell`` (one of :data:`CELLS`); ``options``: the cell's own
    further arguments (IndRNN's ``max_steps`` and ``magnitude``)."""
    checks.one_of("cell", cell, CELLS)
    cls, kwargs = CELLS[cell]
    options = dict(options or {})
    try:
        return cls(input_size, hidden_size, bias=bias, **kwargs, **options)
    except TypeError as err:
        if options and "unexpected keyword argument" in str(err):
            raise ValueError(f"cell_options: cell={cell!r} takes no option(s) {sorted(options)}") from None
        raise
