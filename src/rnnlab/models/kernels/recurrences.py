"""Hand-written recurrences: the Elman, GRU and LSTM cells' ``recur`` over a whole sequence,
as autograd Functions with their own backward.

What they speed up: the step loop under autograd (``recur`` called T times) records a
product and a chain of element-wise operations per step, and its backward computes
W_hh's gradient as T small products added one at a time. Here the forward writes every
step's results in place into preallocated (T, B, ...) tensors, and the backward
precomputes every activation derivative for all steps at once, runs one (B, H) x (H, G*H)
product per step for the state's gradient and gets W_hh's gradient as one product at the
end. These loops are the reference for the compiled ones (:mod:`.compiled`), which run
instead on the CPU in float32 and float64 where they could be built, and under the CPU's
bfloat16 autocast where :func:`autocast_loop` says so; they run as they are elsewhere (no
compiler, CUDA, float16 autocast). Measurements: docs/performance.md.

What they must equal: the readable cells (:mod:`rnnlab.models.cells`), step by step, and
torch.nn.RNN / GRU / LSTM, to 1e-10 in float64 for outputs, final states and every
gradient (tests/models/test_cells.py, test_rnn.py, test_fast_paths.py).

The entry points :func:`elman`, :func:`gru` and :func:`lstm` take tensors and weights, not
a cell: the projected input (T*B, G*H) with rows in time-major order (a temporary the
caller gives up: the Elman and the compiled LSTM recurrences write into it), the initial
state and W_hh, and, where :func:`takes_masks`, a mask of the valid steps. They return
the outputs (T, B, H) and the final state, a tuple. Under autocast (mixed precision) the
Python loops run wholly in autocast's dtype; the compiled ones keep a float32 state, their
products in bfloat16 or float32 (:func:`autocast_loop`). Without a gradient to come (evaluation,
prediction) :func:`gru_inference` and :func:`lstm_inference` take the layer's input x and
W_xh instead of the projected input: one compiled call projects a few steps at a time, so
no (T, B, G*H) temporary is made (at the char shape that saves a 33 MB allocation whose
fresh pages cost about as much as the projection's product).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import compiled
from .matmul import MIN_PACKED_LINEAR_MACS, StepWeight, packed_weight


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh in place, as 2 sigmoid(2x) - 1: on the CPU, ATen's sigmoid is about 4x faster than
    its tanh, so these four passes take about half the time of one tanh."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


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


def _run(recurrence, projected: torch.Tensor, *inputs) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Apply ``recurrence`` to (projected, *inputs); return (outputs (T, B, H), final state).

    The Functions return h_T as a tensor of its own, not a view of the outputs: a model that
    reads only h_T (a classifier) or only the outputs then sends no gradient to the other,
    and the backward skips it, instead of receiving a (T, B, H) tensor of zeros (a
    full-size fill, copy and add per layer and step of training).
    """
    device = projected.device.type
    if torch.is_autocast_enabled(device):
        # Mixed precision: run the whole recurrence in autocast's dtype, as autocast runs
        # torch.nn's fused RNN kernels (and as torch.amp.custom_fwd(cast_inputs=...) would):
        # every input cast once, autocast off inside, so the forward and the hand-written
        # backward see tensors of one dtype. The casts are differentiable, so W_hh and h0
        # get float32 gradients.
        dtype = torch.get_autocast_dtype(device)
        cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in (projected, *inputs)]
        with torch.autocast(device, enabled=False):
            outputs, *final = recurrence.apply(*cast)
    else:
        outputs, *final = recurrence.apply(projected, *inputs)
    B, H = final[0].shape
    return outputs.view(-1, B, H), tuple(final)  # (T, B, H)


def takes_masks(projected: torch.Tensor, h0: torch.Tensor, gates: int) -> bool:
    """Whether :func:`elman` (``gates`` 1), :func:`gru` (3) or :func:`lstm` (4) runs a
    variable-length batch (a ``mask``) on ``projected`` from state ``h0``: the compiled loops
    do (also under bfloat16 autocast: :func:`autocast_loop`); the Python loops here do not,
    and the cells then run their readable masked loop (:func:`rnnlab.models.cells.recur_masked`)."""
    return compiled.usable(projected) is not None or autocast_loop(projected, h0, gates) is not None


# Under bfloat16 autocast a step product of at least this many multiply-adds, B x H x G*H,
# runs in bfloat16 (measured on an Intel Xeon with AMX, 2 cores, forward + backward of 2
# layers, B 64, T 128: the GRU at H = 128, 3.1 million, is faster on the float32 loop; the
# LSTM at H = 128, 4.2 million, and both at H = 256 are faster mixed, 0.55-0.87x the float32
# loop's time; the Elman cell's Python loop in bfloat16 beats its float32 loop from H = 512).
MIN_MIXED_STEP_MACS = 1 << 22


def autocast_loop(projected: torch.Tensor, h0: torch.Tensor, gates: int) -> str | None:
    """Which compiled loop runs a recurrence of ``gates`` gates (1 Elman, 3 GRU, 4 LSTM) under
    the CPU's bfloat16 autocast, where oneDNN has native bfloat16 and a step's product is at
    least MIN_MIXED_STEP_MACS: "mixed" for the GRU and LSTM (products in bfloat16 around a
    float32 state), None for the Elman cell (the Python loop in bfloat16); below that size
    or without native bfloat16, "float32" (the float32 loop on the input cast to float32).
    None also outside CPU bfloat16 autocast or without compiled loops (the Python loop then
    runs in autocast's dtype)."""
    if compiled.mixed_usable(projected) is None:
        return None
    B, H = h0.shape
    if B * H * gates * H >= MIN_MIXED_STEP_MACS and compiled.native_bfloat16():
        return "mixed" if gates > 1 else None
    return "float32"


def _run_autocast(loop: str, function, projected: torch.Tensor, B: int, inputs: tuple, mask: torch.Tensor | None):
    """:func:`_run_compiled` under bfloat16 autocast, autocast off inside: ``projected`` as
    bfloat16 ("mixed") or float32 ("float32"), the other tensors as float32. The casts are
    differentiable, so each input gets a gradient of its own type."""
    cast = [t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    with torch.autocast("cpu", enabled=False):
        return _run_compiled(function, projected.to(torch.bfloat16 if loop == "mixed" else torch.float32), B,
                             tuple(cast), mask)


def _run_compiled(function, projected: torch.Tensor, B: int, inputs: tuple, mask: torch.Tensor | None):
    """Apply a compiled Function to ``projected`` (T*B, G*H); mask (T, B, 1) zeroes the outputs
    past each sequence's length (the Function carries ended sequences' states)."""
    T = projected.shape[0] // B
    step_mask = compiled.step_mask(mask)  # (T, B) or None
    # Without a gradient to come (torch.no_grad, inference) only the states are kept.
    save = _wants_grad(projected, *inputs)
    results = function.apply(projected, *inputs, step_mask, save)
    # The LSTM also returns the gates it wrote over projected (a Function must return what it
    # overwrites); nothing reads them.
    outputs, *final = results[:-1] if function is compiled.LSTM else results
    outputs = outputs.view(T, B, -1)  # (T, B, H)
    if mask is not None:
        outputs = outputs.masked_fill(~mask, 0)
    return outputs, tuple(final)


def _wants_grad(*inputs) -> bool:
    """Whether a gradient may be asked for of a result computed from ``inputs`` (tensors and
    other arguments): grad mode is on and one of the tensors requires one."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs if isinstance(t, torch.Tensor))


def projects_in_loop(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether :func:`gru_inference` and :func:`lstm_inference` run this layer: the compiled
    loops are usable and no gradient will be asked for (torch.no_grad, inference)."""
    if _wants_grad(x, *weights):
        return False
    return compiled.usable(x) is not None and all(w.dtype == x.dtype for w in weights)


def _run_inference(name: str, x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None, state: tuple,
                   w_hh: torch.Tensor, extra: tuple, mask: torch.Tensor | None):
    """A GRU or LSTM layer's forward without a backward, in one compiled call that projects x a
    few steps at a time (csrc/recurrences.cpp, StepInputs), or for a narrow LSTM layer inside
    its step: no (T, B, G*H) temporary."""
    T, B, D = x.shape
    step_mask = compiled.step_mask(mask)  # (T, B) or None
    # The LSTM's step multiplies h_{t-1} by W_hh in its own layout of it, and where the input is
    # narrow (D <= H / 4, as a first layer on characters or features usually is) x_t by W_xh
    # too, in the same pass: a separate projection of so few multiply-adds per output is
    # bound by writing and re-reading its (T, B, 4H) output, not by arithmetic.
    in_step = name == "lstm" and 4 * D <= w_hh.shape[1]
    # W_xh is packed once per call and used T / CHUNK_STEPS times: worth it from the size at
    # which the one-product projection packs (MIN_PACKED_LINEAR_MACS), if the chunk's product
    # is timed faster packed.
    packed_ih = (packed_weight(w_ih, compiled.CHUNK_STEPS * B)
                 if not in_step and T * B * w_ih.numel() >= MIN_PACKED_LINEAR_MACS else None)
    state = tuple(s.contiguous() for s in state)
    x, w_ih, w_hh = x.contiguous(), w_ih.contiguous(), w_hh.contiguous()
    if name == "gru":
        results = compiled.extension().gru_inference(x, w_ih, packed_ih, bias, *state, w_hh, packed_weight(w_hh, B),
                                                     *extra, step_mask)
    else:
        results = compiled.extension().lstm_inference(x, w_ih, packed_ih, bias, *state, w_hh, step_mask, in_step)
    outputs = results[0]  # (T, B, H)
    final = (outputs[-1].clone(), *results[1:len(state)])  # h_T [, c_T]
    if mask is not None:
        outputs = outputs.masked_fill_(~mask, 0)
    return outputs, final


def gru_inference(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None, h0: torch.Tensor,
                  w_hh: torch.Tensor, b_hn: torch.Tensor | None, mask: torch.Tensor | None = None):
    """:func:`gru` of ``W_xh x + bias`` where :func:`projects_in_loop`. Inputs: x (T, B, D);
    w_ih (3H, D); bias (3H,) or None; the rest as :func:`gru`. Outputs as :func:`gru`."""
    return _run_inference("gru", x, w_ih, bias, (h0,), w_hh, (b_hn,), mask)


def lstm_inference(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None, h0: torch.Tensor,
                   c0: torch.Tensor, w_hh: torch.Tensor, mask: torch.Tensor | None = None):
    """:func:`lstm` of ``W_xh x + bias`` where :func:`projects_in_loop`. Inputs: x (T, B, D);
    w_ih (4H, D); bias (4H,) or None; the rest as :func:`lstm`. Outputs as :func:`lstm`."""
    return _run_inference("lstm", x, w_ih, bias, (h0, c0), w_hh, (), mask)


def elman(projected: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, relu: bool = False,
          mask: torch.Tensor | None = None):
    """The Elman cell's recurrence, h_t = act(p_t + W_hh h_{t-1}).

    Inputs: projected (T*B, H), W_xh x_t + b_xh + b_hh (overwritten); h0 (B, H); w_hh (H, H);
    mask (T, B, 1) bool or None (only where :func:`takes_masks`).
    Outputs: outputs (T, B, H), zero past each length; (h_T (B, H),), each sequence's last state.
    """
    if compiled.usable(projected) is not None:  # the loop in C++: kernels/compiled.py
        return _run_compiled(compiled.Elman, projected, h0.shape[0], (h0, w_hh, relu), mask)
    if autocast_loop(projected, h0, 1) == "float32":  # bfloat16 autocast, small products
        return _run_autocast("float32", compiled.Elman, projected, h0.shape[0], (h0, w_hh, relu), mask)
    return _run(ElmanRecurrence, projected, h0, w_hh, relu)


def gru(projected: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor | None,
        mask: torch.Tensor | None = None):
    """The GRU cell's recurrence.

    Inputs: projected (T*B, 3H), W_xh x_t + b_xh + (b_hr, b_hz, 0); h0 (B, H); w_hh (3H, H);
    b_hn (H,) or None; mask as :func:`elman`. Outputs: outputs (T, B, H); (h_T (B, H),).
    """
    if compiled.usable(projected) is not None:
        return _run_compiled(compiled.GRU, projected, h0.shape[0], (h0, w_hh, b_hn), mask)
    loop = autocast_loop(projected, h0, 3)
    if loop is not None:  # bfloat16 autocast: compiled.GRU takes a bfloat16 or float32 input
        return _run_autocast(loop, compiled.GRU, projected, h0.shape[0], (h0, w_hh, b_hn), mask)
    return _run(GRURecurrence, projected, h0, w_hh, b_hn)


def lstm(projected: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor,
         mask: torch.Tensor | None = None):
    """The LSTM cell's recurrence.

    Inputs: projected (T*B, 4H), W_xh x_t + b_xh + b_hh (may be overwritten); h0, c0 (B, H); w_hh (4H, H); mask as
    :func:`elman`. Outputs: outputs (T, B, H); (h_T (B, H), c_T (B, H)).
    """
    if compiled.usable(projected) is not None:
        return _run_compiled(compiled.LSTM, projected, h0.shape[0], (h0, c0, w_hh), mask)
    loop = autocast_loop(projected, h0, 4)
    if loop is not None:  # bfloat16 autocast
        function = compiled.MixedLSTM if loop == "mixed" else compiled.LSTM
        return _run_autocast(loop, function, projected, h0.shape[0], (h0, c0, w_hh), mask)
    return _run(LSTMRecurrence, projected, h0, c0, w_hh)
