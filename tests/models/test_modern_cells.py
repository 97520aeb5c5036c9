"""minGRU, minLSTM, IndRNN and the layer-normalised LSTM: each against its paper's equations
written out here independently, the parallel scan against the step-by-step loop (float64,
1e-10) with and without h0 and lengths, gradients by gradcheck, IndRNN's constraint, and
every architecture built with each (training: tests/research/test_cells_training.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import flat_state
from rnnlab.models import RNN, BidirectionalRNN, CharRNN, LSTMCell, SequenceClassifier, SequenceTagger
from rnnlab.models.modern_cells import (IndRNNCell, LayerNormLSTMCell, MinGRUCell, MinLSTMCell, log_space_scan)

MODERN = ["min_gru", "min_lstm", "indrnn", "ln_lstm"]


# ----------------------------------------------------------------- the papers' equations
def min_gru_step(cell, x, h):
    """Feng et al. (2024), minGRU with g (appendix B.3), from the weights' blocks."""
    H = cell.hidden_size
    w, b = cell.Wxh.weight, cell.Wxh.bias
    z = torch.sigmoid(x @ w[:H].t() + b[:H])
    v = x @ w[H:].t() + b[H:]
    h_tilde = torch.where(v >= 0, v + 0.5, torch.sigmoid(v))
    return (1 - z) * h + z * h_tilde


def min_lstm_step(cell, x, h):
    H = cell.hidden_size
    w, b = cell.Wxh.weight, cell.Wxh.bias
    f = torch.sigmoid(x @ w[:H].t() + b[:H])
    i = torch.sigmoid(x @ w[H:2 * H].t() + b[H:2 * H])
    v = x @ w[2 * H:].t() + b[2 * H:]
    h_tilde = torch.where(v >= 0, v + 0.5, torch.sigmoid(v))
    return f / (f + i) * h + i / (f + i) * h_tilde


def indrnn_step(cell, x, h):
    """Li et al. (2018): h = relu(W x + b + u * h)."""
    return torch.relu(x @ cell.Wxh.weight.t() + cell.Wxh.bias + cell.u * h)


def layer_norm(v, gain, shift, eps=1e-5):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if shift is None else out + shift


def ln_lstm_step(cell, x, state):
    """Ba et al. (2016), eq. 20-22."""
    h, c = state
    pre = (layer_norm(h @ cell.Whh.weight.t(), cell.ln_h.weight, None)
           + layer_norm(x @ cell.Wxh.weight.t(), cell.ln_x.weight, cell.ln_x.bias))
    i, f, g, o = pre.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(layer_norm(c, cell.ln_c.weight, cell.ln_c.bias)), c


STEPS = {"min_gru": (MinGRUCell, min_gru_step), "min_lstm": (MinLSTMCell, min_lstm_step),
         "indrnn": (IndRNNCell, indrnn_step), "ln_lstm": (LayerNormLSTMCell, ln_lstm_step)}


def _randomise(module):
    """Random values in every parameter, layer-norm gains and IndRNN's u included, so that
    no equation's term is hidden by an initial 1 or 0."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)


@pytest.mark.parametrize("name", MODERN)
def test_one_step_follows_the_papers_equations(name):
    cls, reference = STEPS[name]
    cell = cls(5, 6).double()
    _randomise(cell)
    x = torch.randn(4, 5, dtype=torch.float64)
    h = torch.randn(4, 6, dtype=torch.float64)
    state = (h, torch.randn(4, 6, dtype=torch.float64)) if name == "ln_lstm" else h
    ours = cell(x, state)
    expected = reference(cell, x, state)
    for a, b in zip(flat_state(ours), flat_state(expected), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", MODERN)
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_sequence_equals_the_step_loop_in_float64(name, with_h0, with_lengths):
    """RNN.forward (the scan for minGRU/minLSTM, the hoisted loop for the others) equals the
    seed's step-by-step loop, outputs, final states and every gradient; ended sequences
    keep their state."""
    torch.manual_seed(0)
    rnn = RNN(5, 6, num_layers=2, cell=name).double()
    _randomise(rnn)
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    parts = 2 if name == "ln_lstm" else 1
    h0 = tuple(torch.randn(2, 3, 6, dtype=torch.float64) for _ in range(parts)) if with_h0 else None
    h0 = h0[0] if h0 is not None and parts == 1 else h0
    lengths = torch.tensor([11, 3, 7]) if with_lengths else None

    def run(fn, *args):
        xx = x.clone().requires_grad_()
        out, h_n = fn(xx, *args)
        loss = (out * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum() + sum((s ** 2).sum() for s in flat_state(h_n))
        return [out, *flat_state(h_n), *torch.autograd.grad(loss, [xx, *rnn.parameters()])]

    ours = run(lambda xx, h: rnn(xx, h, lengths=lengths), h0)

    def stepwise(xx, h):
        if lengths is None:
            return rnn.forward_stepwise(xx, h)
        outs, finals = [], []
        for b in range(x.shape[0]):  # each sequence alone, at its own length
            hb = None if h is None else (tuple(s[:, b:b + 1] for s in h) if isinstance(h, tuple) else h[:, b:b + 1])
            out, h_n = rnn.forward_stepwise(xx[b:b + 1, :lengths[b]], hb)
            outs.append(F.pad(out, (0, 0, 0, x.shape[1] - int(lengths[b]))))
            finals.append(flat_state(h_n))
        state = [torch.cat(parts_, dim=1) for parts_ in zip(*finals)]
        return torch.cat(outs), tuple(state) if len(state) == 2 else state[0]

    expected = run(stepwise, h0)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_log_space_scan_equals_the_recurrence_and_passes_gradcheck():
    torch.manual_seed(1)
    T, B, H = 9, 2, 3
    log_a = -torch.rand(T, B, H, dtype=torch.float64) * 3
    log_b = torch.randn(T, B, H, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)  # either sign: it enters outside the logs
    h, expected = h0, []
    for t in range(T):
        h = log_a[t].exp() * h + log_b[t].exp()
        expected.append(h)
    torch.testing.assert_close(log_space_scan(log_a, log_b, h0), torch.stack(expected), atol=1e-12, rtol=0)
    # in chunks of 4 steps (two whole chunks and a partial one): the same states
    torch.testing.assert_close(log_space_scan(log_a, log_b, h0, chunk=4), torch.stack(expected), atol=1e-12, rtol=0)
    inputs = [t.clone().requires_grad_() for t in (log_a, log_b, h0)]
    assert torch.autograd.gradcheck(log_space_scan, inputs)
    assert torch.autograd.gradcheck(lambda a, b, h: log_space_scan(a, b, h, chunk=4), inputs)


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_compiled_min_scan_equals_the_log_space_scan_and_passes_gradcheck(name):
    """The CPU's fused layer (coefficients and recurrence in one C++ loop, rows split between
    threads) against the log-space scan of the cells' log coefficients, float64, with ended
    rows; 70 rows of 100 units, so the rows are split into several ranges."""
    from rnnlab.models.kernels import compiled

    if compiled.extension() is None:
        pytest.skip("no compiled loops on this machine")
    torch.manual_seed(6)
    cell = (MinGRUCell if name == "min_gru" else MinLSTMCell)(3, 100).double()
    G = cell.gates
    projected = torch.randn(7, 70, G * 100, dtype=torch.float64) * 2
    h0 = torch.randn(70, 100, dtype=torch.float64)
    mask = torch.arange(7)[:, None] < torch.randint(1, 8, (70,))[None, :]  # (T, B)

    def reference(p, h):
        log_a, log_b = cell.log_coefficients(p)
        log_a = log_a.masked_fill(~mask[..., None], 0.0)
        log_b = log_b.masked_fill(~mask[..., None], float("-inf"))
        return log_space_scan(log_a, log_b, h)

    inputs = [projected.clone().requires_grad_(), h0.clone().requires_grad_()]
    weights = torch.randn(7, 70, 100, dtype=torch.float64)
    ours = compiled.MinScan.apply(*inputs, mask, G)
    expected = reference(*inputs)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    for x, y in zip(torch.autograd.grad((ours * weights).sum(), inputs),
                    torch.autograd.grad((expected * weights).sum(), inputs), strict=True):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)
    small = [projected[:, :2, :].reshape(7, 2, G, 100)[..., :3].reshape(7, 2, G * 3).clone().requires_grad_(),
             h0[:2, :3].clone().requires_grad_()]
    assert torch.autograd.gradcheck(lambda p, h: compiled.MinScan.apply(p, h, mask[:, :2].contiguous(), G), small)


def test_compiled_indrnn_layer_equals_the_step_loop_and_passes_gradcheck(extension_calls):
    """The CPU's compiled IndRNN layer (rows split between threads, 70 rows of 100 units)
    against the readable masked step loop in float64, ended rows included: outputs, final
    states and the gradients of the projected input, h0 and u."""
    from rnnlab.models.cell_base import recur_masked
    from rnnlab.models.kernels import compiled

    if compiled.extension() is None:
        pytest.skip("no compiled loops on this machine")
    torch.manual_seed(7)
    cell = IndRNNCell(3, 100).double()
    _randomise(cell)
    projected = torch.randn(7, 70, 100, dtype=torch.float64)
    h0 = torch.randn(70, 100, dtype=torch.float64).abs()
    mask = torch.arange(7)[:, None] < torch.randint(1, 8, (70,))[None, :]  # (T, B)
    weights = torch.randn(7, 70, 100, dtype=torch.float64)

    def grads(outputs, final, inputs):
        return torch.autograd.grad((outputs * weights).sum() + (final ** 2).sum(), inputs)

    inputs = [projected.clone().requires_grad_(), h0.clone().requires_grad_(), cell.u]
    ours = compiled.IndRNNScan.apply(inputs[0], inputs[1], cell.u, mask)
    ours_final = ours[-1]
    ours = ours.masked_fill(~mask[..., None], 0.0)
    expected, (expected_final,) = recur_masked(cell, inputs[0], (inputs[1],), mask[..., None])
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours_final, expected_final, atol=1e-12, rtol=0)
    for a, b in zip(grads(ours, ours_final, inputs), grads(expected, expected_final, inputs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert extension_calls == ["indrnn_scan", "indrnn_scan_backward"]
    small = [projected[:, :2, :3].clone().requires_grad_(), h0[:2, :3].clone().requires_grad_(),
             cell.u[:3].detach().clone().requires_grad_()]
    assert torch.autograd.gradcheck(lambda p, h, u: compiled.IndRNNScan.apply(p, h, u, mask[:, :2].contiguous()),
                                    small)


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_minimal_cells_scan_passes_gradcheck_with_lengths(name):
    torch.manual_seed(2)
    rnn = RNN(3, 4, num_layers=1, cell=name).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2])
    assert torch.autograd.gradcheck(lambda x, h0: rnn(x, h0, lengths=lengths)[0], (x, h0))


def test_minimal_cells_run_long_sequences_without_overflow():
    """The log-space scan stays finite and equal to the step loop where the products of
    a_t underflow (T = 3000, log A_T far below float32's range)."""
    torch.manual_seed(4)
    rnn = RNN(2, 8, cell="min_gru")
    x = torch.randn(2, 3000, 2)
    with torch.no_grad():
        out, h_n = rnn(x)
        step_out, step_h_n = rnn.forward_stepwise(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, step_out, atol=2e-5, rtol=2e-5)  # one scan of all 3000 steps: 3e-4
    torch.testing.assert_close(h_n, step_h_n, atol=2e-5, rtol=2e-5)


def test_indrnn_bound_initialisation_and_clipping():
    cell = IndRNNCell(3, 500, max_steps=100, magnitude=2.0)
    u_max = 2.0 ** (1 / 100)
    assert cell.u_max == pytest.approx(u_max)
    assert (cell.u >= 0).all() and (cell.u <= u_max).all() and cell.u.max() > 0.9 * u_max
    with torch.no_grad():
        cell.u.mul_(3).sub_(1)  # some far above, some far below
    cell.constrain_()
    assert cell.u.abs().max().item() == pytest.approx(u_max)
    with pytest.raises(ValueError, match="magnitude"):
        IndRNNCell(3, 4, magnitude=0)
    with pytest.raises(ValueError, match="magnitude"):
        IndRNNCell(3, 4, magnitude=True)
    assert IndRNNCell(3, 4, max_steps=10, magnitude=0.5).u_max == pytest.approx(0.5 ** (1 / 10))  # a decaying bound
    default = IndRNNCell(3, 4)
    assert default.max_steps == 1000 and default.u_max == pytest.approx(2.0 ** (1 / 1000))
    with pytest.raises(ValueError, match=r"^expected max_steps "):
        IndRNNCell(3, 4, max_steps=0)


def test_ln_lstm_forget_bias_starts_at_one_and_ln_shifts_follow_bias():
    cell = LayerNormLSTMCell(3, 4)
    expected = torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8)  # (i, f, g, o): only the forget gate's
    torch.testing.assert_close(cell.ln_x.bias, expected, atol=0, rtol=0)
    assert cell.Wxh.bias is None and cell.Whh.bias is None and cell.ln_h.bias is None
    assert cell.ln_c.bias is not None
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(5.0)
    cell.reset_parameters()  # as at construction again
    torch.testing.assert_close(cell.ln_x.bias, expected, atol=0, rtol=0)
    for norm in (cell.ln_x, cell.ln_h, cell.ln_c):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    torch.testing.assert_close(cell.ln_c.bias, torch.zeros(4), atol=0, rtol=0)
    plain = LayerNormLSTMCell(3, 4, bias=False)
    assert plain.ln_x.bias is None and plain.ln_c.bias is None


def test_indrnn_clipping_reaches_the_weight_itself_under_weight_drop():
    rnn = RNN(3, 50, cell="indrnn", weight_drop=0.5, cell_options={"max_steps": 10})
    cell = rnn.cells[0]
    original = cell.parametrizations.u.original
    with torch.no_grad():
        original.mul_(4).sub_(2)
    cell.constrain_()
    assert original.abs().max().item() == pytest.approx(cell.u_max)


@pytest.mark.parametrize("name", MODERN)
def test_every_architecture_builds_with_the_new_cells(name):
    torch.manual_seed(0)
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 2, 5, 1])
    assert SequenceClassifier(5, 8, 3, cell=name)(x, lengths).shape == (4, 3)
    assert SequenceTagger(5, 8, 3, cell=name)(x, lengths).shape == (4, 7, 3)
    assert SequenceTagger(5, 8, 3, bidirectional=True, cell=name)(x, lengths).shape == (4, 7, 3)
    out, _ = BidirectionalRNN(5, 8, cell=name)(x, lengths=lengths)
    assert out.shape == (4, 7, 16)
    lm = CharRNN(11, 6, 8, cell=name).eval()
    idx = torch.randint(0, 11, (2, 9))
    logits, state = lm(idx)
    assert logits.shape == (2, 9, 11)
    # generation's one-token decoder equals the whole-sequence forward, step by step
    step = lm.decoder()
    with torch.no_grad():
        full, _ = lm(idx)
        _, state = lm(idx[:, :1])
        parts = state if isinstance(state, tuple) else (state,)
        layers = [tuple(s[layer] for s in parts) for layer in range(lm.rnn.num_layers)]
        for t in range(1, 9):
            last, layers = step(idx[:, t], layers)
            torch.testing.assert_close(last, full[:, t], atol=1e-5, rtol=1e-5)


def test_cell_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="cell_options: cell='gru' takes no option"):
        RNN(3, 4, cell="gru", cell_options={"max_steps": 10})
    with pytest.raises(ValueError, match="cells torch.nn has"):
        RNN(3, 4, cell="min_gru").to_torch()
    with pytest.raises(TypeError, match=r"tuple \(h, c\) for cell='ln_lstm'"):
        RNN(3, 4, cell="ln_lstm")(torch.randn(2, 5, 3), torch.zeros(1, 2, 4))


def test_recurrent_state_stays_positive_for_minimal_cells_from_zero():
    """g keeps every candidate positive, so from h0 = 0 every state is positive (what the log
    space needs of b_t)."""
    torch.manual_seed(5)
    out, _ = RNN(4, 16, cell="min_lstm")(torch.randn(3, 50, 4) * 5)
    assert (out > 0).all()
    assert math.isfinite(out.sum().item())


@pytest.mark.parametrize("cell", ["lstm", "ln_lstm"])
def test_an_lstm_step_refuses_a_state_that_is_not_the_pair_h_c(cell):
    step = (LSTMCell if cell == "lstm" else LayerNormLSTMCell)(3, 4)
    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    for state, got in (((h,), "a tuple of 1"), ((h, h, h), "a tuple of 3"), (torch.zeros(2, 2, 4), "Tensor"),
                       ([h, h], "list")):
        with pytest.raises(TypeError) as raised:
            step(x, state)
        assert str(raised.value) == f"expected the LSTM state as a tuple (h, c), got {got}"
    assert [t.shape for t in step(x, (h, h))] == [(2, 4), (2, 4)]
