"""Recurrent cells: one step of the recurrence, and the same recurrence over a whole sequence.

``RNNCell`` is the seed article's Elman cell (tanh, or ReLU on request); ``GRUCell`` and
``LSTMCell`` are the gated cells, written in the same style. Each cell keeps its
parameters in two ``nn.Linear`` layers, ``Wxh`` (input to hidden) and ``Whh`` (hidden to
hidden), with the gates stacked in PyTorch's order, so weights copy one-to-one from and
to ``torch.nn.RNN`` / ``GRU`` / ``LSTM``.

``forward`` is one step, the readable definition. ``forward_sequence`` runs the cell
over all T steps with the input projection hoisted out of the loop; :class:`RNN` uses it.
States are tuples: ``(h,)`` for the Elman and GRU cells, ``(h, c)`` for the LSTM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import _checks


class _Cell(nn.Module):
    """Shared construction and checks. Subclasses set ``gates`` and ``state_size``."""

    gates: int = 1
    state_size: int = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.Wxh = nn.Linear(input_size, self.gates * hidden_size, bias=bias)
        self.Whh = nn.Linear(hidden_size, self.gates * hidden_size, bias=bias)
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier-uniform per gate block (each gate is its own (H, D) map), zero biases: the
        # pre-activations start with unit variance, in the non-saturated range.
        for linear in (self.Wxh, self.Whh):
            for block in linear.weight.data.chunk(self.gates, dim=0):
                nn.init.xavier_uniform_(block)
            if self.bias:
                nn.init.zeros_(linear.bias)

    def _check_step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        w = self.Wxh.weight
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.input_size:
            got = _checks.shape_str(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (B, {self.input_size}), got {got}")
        _checks.same_dtype_device("x", x, w)
        for name, s in zip(("h_prev", "c_prev"), state):
            _checks.state(name, s, (x.shape[0], self.hidden_size), w)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s


def _steps(projected: torch.Tensor, time_dim: int):
    # unbind + one stack at the end, not projected[:, t] indexing: the backward of a
    # strided slice writes a full-size zero gradient per step (O(T^2) memory traffic).
    return projected.unbind(time_dim)


def _masked(new: torch.Tensor, old: torch.Tensor, mask_t: torch.Tensor | None) -> torch.Tensor:
    """Keep the old state where a sequence has already ended (mask_t (B, 1) False)."""
    return new if mask_t is None else torch.where(mask_t, new, old)


class ElmanRecurrence(torch.autograd.Function):
    """h_t = act(p_t + W_hh h_{t-1}) for t = 1..T, with a hand-written backward.

    Autograd through the step loop records an addmm and a tanh per step, and its backward
    computes W_hh's gradient as T small products added one at a time. This backward runs
    the loop only for the hidden-state gradient (one (B, H) x (H, H) product and one
    element-wise step per t) and gets W_hh's gradient as a single (H, T*B) x (T*B, H)
    product at the end. It saves what ``torch.nn.RNN`` saves: the outputs and h_0.

    Inputs: projected (T, B, H) contiguous, the hoisted W_xh x_t + biases; h0 (B, H);
    w_hh (H, H); relu: ReLU instead of tanh.
    Outputs: (T, B, H) hidden states.
    """

    @staticmethod
    def forward(ctx, projected: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, relu: bool) -> torch.Tensor:
        outputs = torch.empty_like(projected)  # (T, B, H)
        w_hh_t = w_hh.t()
        h = h0
        for p_t, out_t in zip(projected.unbind(0), outputs.unbind(0)):  # each (B, H)
            torch.addmm(p_t, h, w_hh_t, out=out_t)  # written in place: no stack at the end
            h = out_t.relu_() if relu else out_t.tanh_()
        ctx.save_for_backward(outputs, h0, w_hh)
        ctx.relu = relu
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: torch.Tensor):
        outputs, h0, w_hh = ctx.saved_tensors
        # act'(pre) for all steps at once (tanh' = 1 - h^2, relu' = [h > 0]): one large
        # element-wise operation instead of T small ones inside the loop.
        slope = (outputs > 0).to(outputs.dtype) if ctx.relu else 1 - outputs * outputs  # (T, B, H)
        grad_pre = torch.empty_like(outputs)  # (T, B, H): dL/d(pre-activation) at every step
        grad_h = torch.zeros_like(h0)  # dL/dh_t arriving from step t + 1
        for t in range(outputs.shape[0] - 1, -1, -1):
            torch.mul(grad_h + grad_outputs[t], slope[t], out=grad_pre[t])
            grad_h = grad_pre[t] @ w_hh  # (B, H): dL/dh_{t-1}
        h_prev = torch.cat([h0.unsqueeze(0), outputs[:-1]])  # (T, B, H): the state each step read
        grad_w_hh = grad_pre.flatten(0, 1).t() @ h_prev.flatten(0, 1)  # (H, T*B) x (T*B, H)
        return grad_pre, grad_h, grad_w_hh, None


class RNNCell(_Cell):
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
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self._check_step(x, (h_prev,))
        pre = self.Wxh(x) + self.Whh(h_prev)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """Inputs: x (B, T, D) if time_dim == 1 else (T, B, D); state (h (B, H),); mask (T, B, 1) or None.

        Outputs: outputs in the layout of x with last dim H; state (h (B, H),) after the last step.
        """
        (h,) = state
        # Hoist the input projection out of the time loop: one (B*T, D) x (D, H) product
        # instead of T small ones, with both biases folded into it.
        bias = self.Wxh.bias + self.Whh.bias if self.bias else None
        projected = F.linear(x, self.Wxh.weight, bias)  # (B, T, H) or (T, B, H)
        relu = self.nonlinearity == "relu"
        if mask is None:
            if time_dim == 0:  # the recurrence runs over contiguous (B, H) slices of (T, B, H)
                outputs = ElmanRecurrence.apply(projected.contiguous(), h, self.Whh.weight, relu)
                return outputs, (outputs[-1],)
            outputs = ElmanRecurrence.apply(projected.transpose(0, 1).contiguous(), h, self.Whh.weight, relu)
            return outputs.transpose(0, 1), (outputs[-1],)  # (B, T, H)
        # Variable lengths: plain autograd through the step loop, holding finished sequences.
        w_hh_t = self.Whh.weight.t()  # (H, H)
        outputs = []
        for t, p_t in enumerate(_steps(projected, time_dim)):  # each (B, H)
            pre = torch.addmm(p_t, h, w_hh_t)  # (B, H)
            h_new = torch.relu(pre) if relu else torch.tanh(pre)
            h_new, h = h_new * mask[t], _masked(h_new, h, mask[t])
            outputs.append(h_new)
        return torch.stack(outputs, dim=time_dim), (h,)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class GRUCell(_Cell):
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
        self._check_step(x, (h_prev,))
        x_r, x_z, x_n = self.Wxh(x).chunk(3, dim=1)  # each (B, H)
        h_r, h_z, h_n = self.Whh(h_prev).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h_prev

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`."""
        (h,) = state
        H = self.hidden_size
        projected = F.linear(x, self.Wxh.weight, self.Wxh.bias)  # (B, T, 3H) or (T, B, 3H)
        if self.bias:
            # b_hr and b_hz simply add, so they join the hoisted product; b_hn sits inside r * (.).
            b_hh = self.Whh.bias
            projected = projected + torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)])
            b_hn = b_hh[2 * H:]
        w_hh_t = self.Whh.weight.t()  # (H, 3H)
        outputs = []
        for t, p_t in enumerate(_steps(projected, time_dim)):  # each (B, 3H)
            hh = h @ w_hh_t  # (B, 3H)
            rz = torch.sigmoid(p_t[:, :2 * H] + hh[:, :2 * H])  # (B, 2H)
            r, z = rz[:, :H], rz[:, H:]
            h_n = hh[:, 2 * H:] + b_hn if self.bias else hh[:, 2 * H:]
            n = torch.tanh(p_t[:, 2 * H:] + r * h_n)  # (B, H)
            h_new = n + z * (h - n)  # = (1 - z) n + z h, one operation fewer
            if mask is not None:
                h_new, h = h_new * mask[t], _masked(h_new, h, mask[t])
            else:
                h = h_new
            outputs.append(h_new)
        return torch.stack(outputs, dim=time_dim), (h,)


class LSTMCell(_Cell):
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

    def _init_weights(self) -> None:
        super()._init_weights()
        if self.bias:
            H = self.hidden_size
            nn.init.constant_(self.Wxh.bias[H:2 * H], 0.5)
            nn.init.constant_(self.Whh.bias[H:2 * H], 0.5)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """Inputs: x (B, D), state (h_prev (B, H), c_prev (B, H)). Outputs: (h, c), each (B, H)."""
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"expected the LSTM state as a tuple (h, c), got {type(state).__name__}")
        self._check_step(x, state)
        h_prev, c_prev = state
        i, f, g, o = (self.Wxh(x) + self.Whh(h_prev)).chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`, with state (h, c)."""
        h, c = state
        bias = self.Wxh.bias + self.Whh.bias if self.bias else None
        projected = F.linear(x, self.Wxh.weight, bias)  # (B, T, 4H) or (T, B, 4H)
        w_hh_t = self.Whh.weight.t()  # (H, 4H)
        outputs = []
        for t, p_t in enumerate(_steps(projected, time_dim)):  # each (B, 4H)
            gates = torch.addmm(p_t, h, w_hh_t)  # (B, 4H)
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if mask is not None:
                c = _masked(c_new, c, mask[t])
                h_new, h = h_new * mask[t], _masked(h_new, h, mask[t])
            else:
                h, c = h_new, c_new
            outputs.append(h_new)
        return torch.stack(outputs, dim=time_dim), (h, c)


CELLS = {"rnn_tanh": (RNNCell, {"nonlinearity": "tanh"}), "rnn_relu": (RNNCell, {"nonlinearity": "relu"}),
         "gru": (GRUCell, {}), "lstm": (LSTMCell, {})}


def make_cell(cell: str, input_size: int, hidden_size: int, bias: bool = True) -> _Cell:
    """Build the cell named ``cell`` (one of :data:`CELLS`)."""
    if cell not in CELLS:
        raise ValueError(f"expected cell in {sorted(CELLS)}, got {cell!r}")
    cls, kwargs = CELLS[cell]
    return cls(input_size, hidden_size, bias=bias, **kwargs)
