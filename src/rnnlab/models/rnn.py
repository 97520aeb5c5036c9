"""The multi-layer Elman RNN: a stack of :class:`RNNCell` unrolled over time.

Two forms of the same computation live here:

* ``forward`` is layer-major: each layer runs over the whole sequence before the next
  one starts, so the layer's input projection ``Wxh x_t`` for all T steps is one matrix
  product and only ``Whh h_{t-1}`` stays inside the time loop.
* ``step`` / ``forward_stepwise`` are the seed article's loop, time-major: at each step
  the input passes through every cell. It is the readable reference, and the way to
  stream one step at a time.

Both give the same numbers (the tests check it, and check both against ``torch.nn.RNN``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .cell import RNNCell


class RNN(nn.Module):
    r"""A multi-layer Elman RNN with tanh non-linearity, built from :class:`RNNCell`.

    For each layer l and time step t:

    .. math::
        h^{(l)}_t = \tanh(W^{(l)}_{xh} x^{(l)}_t + b^{(l)}_{xh} + W^{(l)}_{hh} h^{(l)}_{t-1} + b^{(l)}_{hh})

    where :math:`x^{(0)}_t` is the input and :math:`x^{(l)}_t = \mathrm{dropout}(h^{(l-1)}_t)`
    for l > 0. Dropout acts between layers only, never along time within a layer
    (dropping along time would corrupt the hidden-state trajectory), and only in
    training mode. Equivalent plain loop (``forward_stepwise``)::

        for t in range(T):
            x_t = x[:, t]
            for l, cell in enumerate(cells):
                h[l] = cell(x_t, h[l])
                x_t = dropout(h[l]) if l < L - 1 else h[l]
            outputs.append(h[-1])

    Args:
        input_size: number of input features D.
        hidden_size: number of hidden units H in every layer.
        num_layers: number of stacked layers L. Default: 1.
        dropout: probability of dropping each output of every layer but the last,
            in [0, 1). Default: 0.0.
        bias: if ``False`` the cells have no biases. Default: ``True``.
        batch_first: if ``True`` inputs and outputs are (B, T, ·), else (T, B, ·).
            States are (L, B, H) either way. Default: ``True``.

    Inputs: x, h0
        - **x**: (B, T, D) if ``batch_first`` else (T, B, D); or unbatched (T, D).
        - **h0**: (L, B, H) initial states, or (L, H) for unbatched input.
          Default: zeros.

    Outputs: outputs, h_n
        - **outputs**: (B, T, H) if ``batch_first`` else (T, B, H), or (T, H) unbatched:
          the top layer's hidden state at every step.
        - **h_n**: (L, B, H), or (L, H) unbatched: every layer's state after the last step.

    Attributes:
        cells: ``nn.ModuleList`` of L :class:`RNNCell`; ``cells[0]`` maps D -> H and the
            others H -> H.

    Example::

        >>> rnn = RNN(10, 64, num_layers=2, dropout=0.2)
        >>> outputs, h_n = rnn(torch.randn(32, 20, 10))
        >>> outputs.shape, h_n.shape
        (torch.Size([32, 20, 64]), torch.Size([2, 32, 64]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
    ):
        super().__init__()
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.dropout_p = _checks.dropout_prob("dropout", dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.cells = nn.ModuleList(
            RNNCell(input_size if layer == 0 else hidden_size, hidden_size, bias=bias)
            for layer in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 and num_layers > 1 else None

    # ------------------------------------------------------------------ inputs
    def _prepare(self, x: torch.Tensor, h0: torch.Tensor | None):
        """Validate, add a batch dimension to unbatched input, and build h0.

        Returns (x, h0, unbatched) with x 3-D in the module's layout and h0 (L, B, H).
        """
        w = self.cells[0].Wxh.weight
        _checks.sequence_input(x, self.input_size, self.batch_first, w)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)  # (1, T, D) or (T, 1, D)
        batch = x.shape[0] if self.batch_first else x.shape[1]
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, batch, self.hidden_size)  # (L, B, H)
        elif unbatched:
            _checks.state("h0", h0, (self.num_layers, self.hidden_size), w)
            h0 = h0.unsqueeze(1)  # (L, 1, H)
        else:
            _checks.state("h0", h0, (self.num_layers, batch, self.hidden_size), w)
        return x, h0, unbatched

    # ----------------------------------------------------------- fast forward
    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        """Inputs: x (B, T, D) [batch_first] or (T, B, D) or (T, D); h0 (L, B, H) or None.

        Outputs: outputs (B, T, H) / (T, B, H) / (T, H); h_n (L, B, H) or (L, H).
        """
        x, h0, unbatched = self._prepare(x, h0)
        time_dim = 1 if self.batch_first else 0
        layer_input = x
        h_n = []
        for layer, cell in enumerate(self.cells):
            if layer > 0 and self.dropout is not None:
                layer_input = self.dropout(layer_input)
            layer_input, h_last = _layer_forward(cell, layer_input, h0[layer], time_dim)
            h_n.append(h_last)
        outputs = layer_input
        h_n = torch.stack(h_n)  # (L, B, H)
        if unbatched:
            return outputs.squeeze(time_dim ^ 1), h_n.squeeze(1)  # (T, H), (L, H)
        return outputs, h_n

    # ------------------------------------------------ seed's step-by-step loop
    def step(self, x_t: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Advance every layer by one time step, as in the seed article's loop.

        Inputs: x_t (B, D); h (L, B, H) or None for zeros.
        Outputs: h (L, B, H), the new state of every layer; ``h[-1]`` is the output.
        """
        w = self.cells[0].Wxh.weight
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            got = _checks.shape_str(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"expected x_t of shape (B, {self.input_size}), got {got}")
        _checks.same_dtype_device("x_t", x_t, w)
        if h is None:
            h = x_t.new_zeros(self.num_layers, x_t.shape[0], self.hidden_size)
        else:
            _checks.state("h", h, (self.num_layers, x_t.shape[0], self.hidden_size), w)
        states = []
        layer_input = x_t
        for layer, cell in enumerate(self.cells):
            h_layer = cell(layer_input, h[layer])
            states.append(h_layer)
            layer_input = h_layer
            if self.dropout is not None and layer < self.num_layers - 1:
                layer_input = self.dropout(layer_input)
        return torch.stack(states)  # (L, B, H)

    def forward_stepwise(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        """The seed's time-major loop over :meth:`step`; same contract as :meth:`forward`."""
        x, h, unbatched = self._prepare(x, h0)
        time_dim = 1 if self.batch_first else 0
        outputs = []
        for x_t in x.unbind(time_dim):  # each (B, D)
            h = self.step(x_t, h)
            outputs.append(h[-1])
        outputs = torch.stack(outputs, dim=time_dim)  # (B, T, H) or (T, B, H)
        if unbatched:
            return outputs.squeeze(time_dim ^ 1), h.squeeze(1)
        return outputs, h

    # ------------------------------------------------ weights from/to torch.nn
    @classmethod
    def from_torch(cls, module: nn.RNN) -> "RNN":
        """Build an :class:`RNN` holding a copy of a ``torch.nn.RNN``'s weights.

        The module must be unidirectional with tanh non-linearity; the result has the
        same sizes, ``num_layers``, ``dropout``, ``bias``, ``batch_first``, dtype and device.
        """
        if not isinstance(module, nn.RNN):
            raise TypeError(f"expected a torch.nn.RNN, got {type(module).__name__}")
        if module.nonlinearity != "tanh":
            raise ValueError(f"expected a torch.nn.RNN with nonlinearity='tanh', got nonlinearity={module.nonlinearity!r}")
        if module.bidirectional:
            raise ValueError(
                "expected a unidirectional torch.nn.RNN, got bidirectional=True "
                "(use rnnlab.models.BidirectionalRNN, whose layers are stacked differently)"
            )
        ref = module.weight_ih_l0
        rnn = cls(module.input_size, module.hidden_size, module.num_layers,
                  dropout=module.dropout, bias=module.bias, batch_first=module.batch_first)
        rnn.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for layer, cell in enumerate(rnn.cells):
                cell.Wxh.weight.copy_(getattr(module, f"weight_ih_l{layer}"))
                cell.Whh.weight.copy_(getattr(module, f"weight_hh_l{layer}"))
                if module.bias:
                    cell.Wxh.bias.copy_(getattr(module, f"bias_ih_l{layer}"))
                    cell.Whh.bias.copy_(getattr(module, f"bias_hh_l{layer}"))
        return rnn

    def to_torch(self) -> nn.RNN:
        """Return a ``torch.nn.RNN`` (tanh) with a copy of these weights, dtype and device."""
        ref = self.cells[0].Wxh.weight
        module = nn.RNN(self.input_size, self.hidden_size, self.num_layers, nonlinearity="tanh",
                        bias=self.bias, batch_first=self.batch_first, dropout=self.dropout_p)
        module.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for layer, cell in enumerate(self.cells):
                getattr(module, f"weight_ih_l{layer}").copy_(cell.Wxh.weight)
                getattr(module, f"weight_hh_l{layer}").copy_(cell.Whh.weight)
                if self.bias:
                    getattr(module, f"bias_ih_l{layer}").copy_(cell.Wxh.bias)
                    getattr(module, f"bias_hh_l{layer}").copy_(cell.Whh.bias)
        return module

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.dropout_p:
            s += f", dropout={self.dropout_p}"
        if not self.bias:
            s += ", bias=False"
        if not self.batch_first:
            s += ", batch_first=False"
        return s


def _layer_forward(cell: RNNCell, x: torch.Tensor, h: torch.Tensor, time_dim: int):
    """Run one layer over a whole sequence.

    Inputs: x (B, T, D) if time_dim == 1 else (T, B, D); h (B, H) initial state.
    Outputs: outputs in the layout of x with last dim H; h (B, H) after the last step.
    """
    # Hoist the input projection out of the time loop: one (B*T, D) x (D, H) product
    # instead of T small ones, with both biases folded into it.
    bias = cell.Wxh.bias + cell.Whh.bias if cell.bias else None
    projected = F.linear(x, cell.Wxh.weight, bias)  # (B, T, H) or (T, B, H)
    w_hh_t = cell.Whh.weight.t()  # (H, H)
    outputs = []
    # unbind + one stack, not projected[:, t] indexing: the backward of a strided slice
    # writes a full-size zero gradient per step (O(T^2) memory traffic); unbind's does not.
    for p_t in projected.unbind(time_dim):  # each (B, H)
        # tanh_ in place is safe: addmm's backward needs its inputs, not its output.
        h = torch.addmm(p_t, h, w_hh_t).tanh_()  # (B, H)
        outputs.append(h)
    return torch.stack(outputs, dim=time_dim), h
