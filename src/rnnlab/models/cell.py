"""Recurrent cells: one step of the recurrence, and the same recurrence over a whole sequence.

``RNNCell`` is the seed article's Elman cell (tanh, or ReLU on request); ``GRUCell`` and
``LSTMCell`` are the gated cells, written in the same style. Each cell keeps its
parameters in two ``nn.Linear`` layers, ``Wxh`` (input to hidden) and ``Whh`` (hidden to
hidden), with the gates stacked in PyTorch's order, so weights copy one-to-one from and
to ``torch.nn.RNN`` / ``GRU`` / ``LSTM``.

``forward`` is one step, the readable definition. ``project`` and ``recur`` are the same
step cut in two: the input projection, which does not depend on the previous state and so
can be computed for all T steps in one product, and the recurrent rest. ``forward_sequence``
runs the cell over all T steps, as :class:`RNN` uses it: the hoisted projection, then the
recurrence as an autograd Function with a hand-written backward (:class:`ElmanRecurrence`,
:class:`GRURecurrence`, :class:`LSTMRecurrence`); with a length mask, ``recur`` step by
step under autograd. States are tuples: ``(h,)`` for the Elman and GRU cells, ``(h, c)``
for the LSTM. The tests check every path against ``torch.nn`` and against each other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _checks
from ._matmul import StepWeight, linear


class _Cell(nn.Module):
    """Shared construction and checks. Subclasses set ``gates`` and ``state_size`` and define
    ``forward`` (one step), ``recur`` (one step from the projected input) and
    ``forward_sequence``."""

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


def _sequence(recurrence, cell: _Cell, x: torch.Tensor, state: tuple[torch.Tensor, ...], time_dim: int, *args):
    """Run an autograd Function over the projected sequence, time-major.

    Inputs: x (B, T, D) if time_dim == 1 else (T, B, D). Outputs: outputs in x's layout
    with last dim H; the final state (h_T (B, H)[, c_T (B, H)]).

    The Functions return h_T as a tensor of its own, not a view of the outputs: a model that
    reads only h_T (a classifier) or only the outputs then sends no gradient to the other,
    and the backward skips it, instead of receiving a (T, B, H) tensor of zeros (a
    full-size fill, copy and add per layer and step of training).
    """
    T, B = (x.shape[0], x.shape[1]) if time_dim == 0 else (x.shape[1], x.shape[0])
    x = x if time_dim == 0 else x.transpose(0, 1)  # (T, B, D)
    # One (T*B, D) x (D, G*H) product. The result is a 2-D tensor of its own (not a view),
    # which the recurrence may overwrite in place without autograd copying it.
    projected = cell.project(x.reshape(T * B, x.shape[2]))  # (T*B, G*H), rows time-major
    weights = (cell.Whh.weight, *args)
    device = projected.device.type
    if torch.is_autocast_enabled(device):
        # Mixed precision: run the whole recurrence in autocast's dtype, as autocast runs
        # torch.nn's fused RNN kernels (and as torch.amp.custom_fwd(cast_inputs=...) would):
        # every input cast once, autocast off inside, so the forward and the hand-written
        # backward see tensors of one dtype. The casts are differentiable, so W_hh and h0
        # get float32 gradients.
        dtype = torch.get_autocast_dtype(device)
        cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in (projected, *state, *weights)]
        with torch.autocast(device, enabled=False):
            outputs, *final = recurrence.apply(*cast)
    else:
        outputs, *final = recurrence.apply(projected, *state, *weights)
    outputs = outputs.view(T, B, cell.hidden_size)  # (T, B, H)
    return (outputs if time_dim == 0 else outputs.transpose(0, 1)), tuple(final)


def _masked_loop(cell: _Cell, x: torch.Tensor, state: tuple[torch.Tensor, ...], time_dim: int,
                 mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Variable lengths: autograd through the step loop; a finished sequence keeps its state.

    Inputs: x (B, T, D) if time_dim == 1 else (T, B, D); mask (T, B, 1), True at valid steps.
    Outputs: outputs in x's layout with last dim H, zero past each length; the state at
    each sequence's last valid step.
    """
    outputs = []
    for t, p_t in enumerate(_steps(cell.project(x), time_dim)):  # each (B, G*H)
        new = cell.recur(p_t, state)
        state = tuple(_masked(n, s, mask[t]) for n, s in zip(new, state))
        outputs.append(new[0] * mask[t])
    return torch.stack(outputs, dim=time_dim), state


def _steps(projected: torch.Tensor, time_dim: int):
    # unbind + one stack at the end, not projected[:, t] indexing: the backward of a
    # strided slice writes a full-size zero gradient per step (O(T^2) memory traffic).
    return projected.unbind(time_dim)


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh in place, as 2 sigmoid(2x) - 1: on the CPU, ATen's sigmoid is about 4x faster than
    its tanh, so these four passes take about half the time of one tanh."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _masked(new: torch.Tensor, old: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
    """Keep the old state where a sequence has already ended (mask_t (B, 1) False)."""
    return torch.where(mask_t, new, old)


class ElmanRecurrence(torch.autograd.Function):
    """h_t = act(p_t + W_hh h_{t-1}) for t = 1..T, with a hand-written backward.

    Autograd through the step loop records an addmm and a tanh per step, and its backward
    computes W_hh's gradient as T small products added one at a time. This backward runs
    the loop only for the hidden-state gradient (one (B, H) x (H, H) product and one
    element-wise step per t) and gets W_hh's gradient as a single (H, T*B) x (T*B, H)
    product at the end. It saves what ``torch.nn.RNN`` saves: the outputs and h_0.

    The outputs are written in place over ``projected`` (each step reads p_t before it
    writes h_t there), which the Function marks dirty and returns, like an in-place
    operation: a fresh (T, B, H) buffer would fault in a new memory page every few steps.

    Inputs: projected (T*B, H) contiguous, the hoisted W_xh x_t + biases with rows in
    time-major order, a temporary the caller gives up; h0 (B, H); w_hh (H, H); relu: ReLU
    instead of tanh.
    Outputs: (T*B, H) hidden states, in the memory of ``projected``; h_T (B, H), the last
    of them as a tensor of its own. Either may go unused (its gradient is then None).
    """

    @staticmethod
    def forward(ctx, projected: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor,
                relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.mark_dirty(projected)
        ctx.set_materialize_grads(False)
        outputs = projected.view(-1, *h0.shape)  # (T, B, H); each step overwrites its slice: no stack at the end
        if relu or projected.element_size() < 4:
            # ReLU, or tanh in a 16-bit float (mixed precision), where 2 sigmoid(2a) - 1 would
            # lose the precision of small h (bf16 resolves s = 0.5 to 2^-9, h to 2^-8).
            recurrent = StepWeight(w_hh, h0.shape[0])  # h -> W_hh h + p_t
            h = h0
            for p_t in outputs.unbind(0):  # each (B, H): p_t, then h_t once the product has read p_t
                pre = recurrent(h, p_t)
                h = torch.clamp(pre, min=0, out=p_t) if relu else torch.tanh(pre, out=p_t)
        else:
            # tanh(a) = 2 sigmoid(2a) - 1, and on the CPU ATen's sigmoid runs about 4x faster
            # than its tanh. Run the loop on s_t = sigmoid(2 a_t) = (h_t + 1) / 2 instead of h_t:
            #   2 a_t = 2 p_t + 2 W_hh (2 s_{t-1} - 1) = q_t + (4 W_hh) s_{t-1},  q_t = 2 p_t - 2 W_hh 1,
            # so each step is still one product and one activation; h = 2 s - 1 at the end is
            # one operation over all T steps. (The scalings by 2 and 4 are exact.)
            q = torch.add(w_hh.sum(1).mul_(-2), outputs, alpha=2, out=outputs)  # (T, B, H): q_t, then s_t
            recurrent = StepWeight(4 * w_hh, h0.shape[0])  # s -> 4 W_hh s + q_t
            s = (h0 + 1) / 2
            for q_t in q.unbind(0):  # each (B, H)
                s = torch.sigmoid(recurrent(s, q_t), out=q_t)
            torch.add(outputs.new_full((1,), -1.0), outputs, alpha=2, out=outputs)  # h_t = 2 s_t - 1
        ctx.save_for_backward(projected, h0, w_hh)
        ctx.relu = relu
        return projected, outputs[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: torch.Tensor | None, grad_h_n: torch.Tensor | None):
        outputs, h0, w_hh = ctx.saved_tensors
        outputs = outputs.view(-1, *h0.shape)  # (T, B, H)
        # act'(pre) for all steps at once (tanh' = 1 - h^2, relu' = [h > 0]): one large
        # element-wise operation instead of T small ones inside the loop.
        slope = (outputs > 0).to(outputs.dtype) if ctx.relu else torch.mul(outputs, outputs).neg_().add_(1)
        # The loop turns slope[t] (T, B, H) into dL/d(pre-activation) at step t, in place:
        # no second (T, B, H) buffer whose fresh pages every step would fault in.
        grad_pre = slope
        # dL/dh_t arriving from step t + 1 (from h_n at the last step)
        grad_h = torch.zeros_like(h0) if grad_h_n is None else grad_h_n.clone()
        from_outputs = None if grad_outputs is None else grad_outputs.view(-1, *h0.shape).unbind(0)  # each (B, H)
        back = StepWeight(w_hh.t(), h0.shape[0])  # g -> g W_hh
        for t, g_t in zip(range(outputs.shape[0] - 1, -1, -1), reversed(grad_pre.unbind(0))):
            if from_outputs is not None:
                grad_h.add_(from_outputs[t])
            grad_h = back(g_t.mul_(grad_h))  # (B, H): dL/dh_{t-1}
        # W_hh's gradient sum_t g_t h_{t-1}^T as one (H, (T-1)*B) x ((T-1)*B, H) product plus step 1's.
        grad_w_hh = grad_pre[1:].flatten(0, 1).t() @ outputs[:-1].flatten(0, 1)
        grad_w_hh.addmm_(grad_pre[0].t(), h0)
        return grad_pre.view(-1, grad_pre.shape[2]), grad_h, grad_w_hh, None


class GRURecurrence(torch.autograd.Function):
    """The GRU recurrence over T steps, with a hand-written backward (see :class:`ElmanRecurrence`).

    Per step the forward runs one (B, H) x (H, 3H) product and writes the gates in place
    into preallocated (T, B, ·) tensors; the backward precomputes every gate derivative for
    all steps at once, so its loop is one product and a few element-wise operations, and
    W_hh's gradient is one product at the end.

    Inputs: projected (T*B, 3H) contiguous, W_xh x_t + b_xh + (b_hr, b_hz, 0) in the gate
    order r, z, n, rows time-major; h0 (B, H); w_hh (3H, H); b_hn (H,) or None.
    Outputs: (T, B, H) hidden states; h_T (B, H) as a tensor of its own.
    """

    @staticmethod
    def forward(ctx, projected: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor,
                b_hn: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        (B, H), T = h0.shape, projected.shape[0] // h0.shape[0]
        projected = projected.view(T, B, 3 * H)
        rz = projected.new_empty(T, B, 2 * H)  # r and z after the sigmoid
        hn = projected.new_empty(T, B, H)  # W_hn h_{t-1} + b_hn, which r multiplies
        n = projected.new_empty(T, B, H)  # the candidate state after the tanh
        outputs = projected.new_empty(T, B, H)
        bias = None if b_hn is None else torch.cat([b_hn.new_zeros(2 * H), b_hn])
        recurrent = StepWeight(w_hh, B, bias)  # h -> W_hh h + (0, 0, b_hn)
        h = h0
        for t, p_t in enumerate(projected.unbind(0)):  # each (B, 3H)
            hh_t = recurrent(h)  # (B, 3H)
            torch.add(p_t[:, :2 * H], hh_t[:, :2 * H], out=rz[t]).sigmoid_()
            r, z = rz[t, :, :H], rz[t, :, H:]
            hn[t].copy_(hh_t[:, 2 * H:])
            _tanh_(torch.addcmul(p_t[:, 2 * H:], r, hn[t], out=n[t]))
            h = torch.sub(h, n[t], out=outputs[t]).mul_(z).add_(n[t])  # h' = n + z (h - n)
        ctx.save_for_backward(rz, hn, n, outputs, h0, w_hh)
        ctx.has_bias = b_hn is not None
        return outputs, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: torch.Tensor | None, grad_h_n: torch.Tensor | None):
        rz, hn, n, outputs, h0, w_hh = ctx.saved_tensors
        B, H = h0.shape
        r, z = rz[..., :H], rz[..., H:]  # each (T, B, H)
        h_prev = torch.cat([h0.unsqueeze(0), outputs[:-1]])  # (T, B, H): the state each step read
        # Derivatives with respect to dL/dh' of every step, for all steps at once: of the
        # pre-activation of n, and of what W_hh h_{t-1} + (0, 0, b_hn) feeds (r, z, and n via r).
        slope_n = (1 - z) * (1 - n * n)  # d pre_n / dh'  (T, B, H)
        slopes = torch.stack([slope_n * hn * r * (1 - r), (h_prev - n) * z * (1 - z), slope_n * r],
                             dim=2)  # (T, B, 3, H)
        # The loop turns slope_n[t] and slopes[t] into gradients in place (no fresh buffers
        # written step by step; see ElmanRecurrence.backward).
        grad_h = torch.zeros_like(h0) if grad_h_n is None else grad_h_n  # dL/dh_t from step t + 1 (or h_n)
        back = StepWeight(w_hh.t(), B)  # g -> g W_hh
        for t in range(outputs.shape[0] - 1, -1, -1):
            dh = grad_h if grad_outputs is None else grad_h + grad_outputs[t]  # (B, H)
            slope_n[t].mul_(dh)  # dL/d pre_n
            g = slopes[t].mul_(dh.unsqueeze(1)).view(B, 3 * H)  # dL/d(W_hh h_{t-1} + (0, 0, b_hn))
            grad_h = back(g, dh * z[t])  # (B, H): dL/dh_{t-1}
        grad_hh, grad_pre_n = slopes.view(-1, B, 3 * H), slope_n  # (T, B, 3H), (T, B, H)
        grad_projected = torch.cat([grad_hh[..., :2 * H], grad_pre_n], dim=2).view(-1, 3 * H)  # (T*B, 3H)
        grad_w_hh = grad_hh.flatten(0, 1).t() @ h_prev.flatten(0, 1)  # (3H, T*B) x (T*B, H)
        grad_b_hn = grad_hh[..., 2 * H:].sum((0, 1)) if ctx.has_bias else None
        return grad_projected, grad_h, grad_w_hh, grad_b_hn


class LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence over T steps, with a hand-written backward (see :class:`ElmanRecurrence`).

    The forward writes the activated gates, cell states and tanh(c) in place into
    preallocated (T, B, ·) tensors; the backward precomputes every gate derivative for all
    steps at once, so its loop is one product and a few element-wise operations, and
    W_hh's gradient is one product at the end.

    Inputs: projected (T*B, 4H) contiguous, W_xh x_t + both biases in the gate order
    i, f, g, o, rows time-major; h0, c0 (B, H); w_hh (4H, H).
    Outputs: (T, B, H) hidden states; h_T and c_T (B, H), the last hidden and cell states,
    tensors of their own.
    """

    @staticmethod
    def forward(ctx, projected: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor):
        ctx.set_materialize_grads(False)
        (B, H), T = h0.shape, projected.shape[0] // h0.shape[0]
        projected = projected.view(T, B, 4 * H)
        gates = torch.empty_like(projected)  # (T, B, 4H): i, f, g, o after their activations
        cells = projected.new_empty(T, B, H)
        tanh_cells = projected.new_empty(T, B, H)
        outputs = projected.new_empty(T, B, H)
        recurrent = StepWeight(w_hh, B)  # h -> W_hh h (+ p_t)
        h, c = h0, c0
        for t, p_t in enumerate(projected.unbind(0)):  # each (B, 4H)
            pre, a = recurrent(h, p_t), gates[t]  # (B, 4H) each
            # One sigmoid for all four gates, g's through tanh(x) = 2 sigmoid(2x) - 1 (see _tanh_).
            pre[:, 2 * H:3 * H].mul_(2)
            torch.sigmoid(pre, out=a)
            a[:, 2 * H:3 * H].mul_(2).sub_(1)
            i, f, g, o = a.chunk(4, dim=1)
            c = torch.mul(f, c, out=cells[t]).addcmul_(i, g)  # c' = f c + i g
            tanh_c = torch.mul(c, 2, out=tanh_cells[t]).sigmoid_().mul_(2).sub_(1)  # tanh(c'), as in _tanh_
            h = torch.mul(o, tanh_c, out=outputs[t])  # h' = o tanh(c')
        ctx.save_for_backward(gates, cells, tanh_cells, outputs, h0, c0, w_hh)
        return outputs, h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: torch.Tensor | None, grad_h_n: torch.Tensor | None,
                 grad_c_n: torch.Tensor | None):
        gates, cells, tanh_cells, outputs, h0, c0, w_hh = ctx.saved_tensors
        B, H = h0.shape
        i, f, g, o = gates.chunk(4, dim=2)  # each (T, B, H)
        c_prev = torch.cat([c0.unsqueeze(0), cells[:-1]])  # (T, B, H)
        # Derivatives of the pre-activations, for all steps at once: per unit of dL/dc for
        # i, f, g and per unit of dL/dh for o.
        slopes = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g),
                            tanh_cells * o * (1 - o)], dim=2).view(-1, B, 4, H)  # (T, B, 4, H)
        slope_c = o * (1 - tanh_cells * tanh_cells)  # dh'/dc' (T, B, H)
        # The loop turns slopes[t] into dL/d(pre-activations) in place (no fresh buffer
        # written step by step; see ElmanRecurrence.backward).
        grad_h = torch.zeros_like(h0) if grad_h_n is None else grad_h_n  # dL/dh_t from step t + 1 (or h_n)
        grad_c = torch.zeros_like(c0) if grad_c_n is None else grad_c_n.clone()  # dL/dc_t, updated in place
        back = StepWeight(w_hh.t(), B)  # g -> g W_hh
        for t in range(outputs.shape[0] - 1, -1, -1):
            dh = grad_h if grad_outputs is None else grad_h + grad_outputs[t]  # (B, H)
            dc = grad_c.addcmul_(dh, slope_c[t])  # (B, H)
            slopes[t, :, :3].mul_(dc.unsqueeze(1))  # i, f, g
            slopes[t, :, 3].mul_(dh)  # o
            grad_c = dc * f[t]  # dL/dc_{t-1}
            grad_h = back(slopes[t].view(B, 4 * H))  # (B, H): dL/dh_{t-1}
        grad_gates = slopes.view(-1, B, 4 * H)  # (T, B, 4H): dL/d(pre-activations)
        h_prev = torch.cat([h0.unsqueeze(0), outputs[:-1]])  # (T, B, H): the state each step read
        grad_w_hh = grad_gates.flatten(0, 1).t() @ h_prev.flatten(0, 1)  # (4H, T*B) x (T*B, H)
        return grad_gates.view(-1, 4 * H), grad_h, grad_c, grad_w_hh


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
        _checks.one_of("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self._check_step(x, (h_prev,))
        pre = self.Wxh(x) + self.Whh(h_prev)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, H) = :meth:`project` of x_t; state (h (B, H),).

        Outputs: (h' (B, H),).
        """
        pre = torch.addmm(p_t, state[0], self.Whh.weight.t())  # (B, H)
        return (torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre),)

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """Inputs: x (B, T, D) if time_dim == 1 else (T, B, D); state (h (B, H),); mask (T, B, 1) or None.

        Outputs: outputs in the layout of x with last dim H; state (h (B, H),) after the last step.
        """
        if mask is not None:
            return _masked_loop(self, x, state, time_dim, mask)
        return _sequence(ElmanRecurrence, self, x, state, time_dim, self.nonlinearity == "relu")

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

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`."""
        if mask is not None:
            return _masked_loop(self, x, state, time_dim, mask)
        b_hn = self.Whh.bias[2 * self.hidden_size:] if self.bias else None
        return _sequence(GRURecurrence, self, x, state, time_dim, b_hn)


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

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 4H) = :meth:`project` of x_t; state (h, c), each (B, H).

        Outputs: (h', c'), each (B, H).
        """
        h, c = state
        i, f, g, o = torch.addmm(p_t, h, self.Whh.weight.t()).chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], time_dim: int,
                         mask: torch.Tensor | None = None):
        """As :meth:`RNNCell.forward_sequence`, with state (h, c)."""
        if mask is not None:
            return _masked_loop(self, x, state, time_dim, mask)
        return _sequence(LSTMRecurrence, self, x, state, time_dim)


CELLS = {"rnn_tanh": (RNNCell, {"nonlinearity": "tanh"}), "rnn_relu": (RNNCell, {"nonlinearity": "relu"}),
         "gru": (GRUCell, {}), "lstm": (LSTMCell, {})}


def make_cell(cell: str, input_size: int, hidden_size: int, bias: bool = True) -> _Cell:
    """Build the cell named ``cell`` (one of :data:`CELLS`)."""
    _checks.one_of("cell", cell, CELLS)
    cls, kwargs = CELLS[cell]
    return cls(input_size, hidden_size, bias=bias, **kwargs)
