"""RNNCell and RNN against torch.nn.RNN, the seed's step loop, gradcheck and dropout rules."""

import itertools
import random

import pytest
import torch
from torch import nn

from rnnlab.models import RNN, RNNCell
from rnnlab.models.dropout import Dropout
from rnnlab.models.kernels.dropout import keep_mask

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _random_sizes(seed):
    rng = random.Random(seed)
    return rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 7), rng.randint(1, 8)  # B, T, D, H


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


CASES = list(itertools.product([1, 2, 3], [True, False], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers,bias,batch_first,batched,give_h0", CASES)
def test_parity_with_torch_rnn(dtype, num_layers, bias, batch_first, batched, give_h0):
    torch.manual_seed(num_layers * 31 + bias * 7 + batch_first * 3 + batched)
    B, T, D, H = _random_sizes(hash((num_layers, bias, batch_first, batched, give_h0)) % 1000)
    ref = nn.RNN(D, H, num_layers, bias=bias, batch_first=batch_first).to(dtype)
    mine = RNN.from_torch(ref)
    assert (mine.num_layers, mine.bias, mine.batch_first) == (num_layers, bias, batch_first)

    if batched:
        shape = (B, T, D) if batch_first else (T, B, D)
        h_shape = (num_layers, B, H)
    else:
        shape, h_shape = (T, D), (num_layers, H)
    x = torch.randn(shape, dtype=dtype)
    h0 = torch.randn(h_shape, dtype=dtype) if give_h0 else None

    def run(module):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_() if give_h0 else None
        out, h_n = module(xi) if hi is None else module(xi, hi)
        # Weight the outputs so every position's gradient differs.
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward(retain_graph=True)
        (h_n ** 2).sum().backward()
        return out, h_n, xi.grad, (hi.grad if give_h0 else None)

    out_r, hn_r, gx_r, gh_r = run(ref)
    out_m, hn_m, gx_m, gh_m = run(mine)
    tol = TOL[dtype]
    assert out_m.shape == out_r.shape and hn_m.shape == hn_r.shape
    torch.testing.assert_close(out_m, out_r, atol=tol, rtol=tol)
    torch.testing.assert_close(hn_m, hn_r, atol=tol, rtol=tol)
    torch.testing.assert_close(gx_m, gx_r, atol=tol, rtol=tol)
    if give_h0:
        torch.testing.assert_close(gh_m, gh_r, atol=tol, rtol=tol)
    g_ref, g_mine = _grads(ref), _grads(mine)
    for layer in range(num_layers):
        pairs = [("weight_ih", "Wxh.weight"), ("weight_hh", "Whh.weight")]
        if bias:
            pairs += [("bias_ih", "Wxh.bias"), ("bias_hh", "Whh.bias")]
        for theirs, ours in pairs:
            torch.testing.assert_close(g_mine[f"cells.{layer}.{ours}"], g_ref[f"{theirs}_l{layer}"], atol=tol, rtol=tol)


@pytest.mark.parametrize("num_layers,bias,batch_first", itertools.product([1, 3], [True, False], [True, False]))
def test_to_torch_round_trip(num_layers, bias, batch_first):
    mine = RNN(4, 6, num_layers, dropout=0.3 if num_layers > 1 else 0.0, bias=bias, batch_first=batch_first).double()
    ref = mine.to_torch()
    assert isinstance(ref, nn.RNN) and ref.nonlinearity == "tanh"
    assert (ref.num_layers, ref.bias, ref.batch_first, ref.dropout) == (num_layers, bias, batch_first, mine.dropout)
    assert ref.weight_ih_l0.dtype == torch.float64
    back = RNN.from_torch(ref)
    for (n1, p1), (n2, p2) in zip(mine.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    mine.eval(), ref.eval()
    torch.testing.assert_close(mine(x)[0], ref(x)[0], atol=1e-12, rtol=0)


def test_from_torch_refuses_bidirectional_projections_and_other_modules():
    with pytest.raises(ValueError, match="unidirectional .* got bidirectional=True"):
        RNN.from_torch(nn.RNN(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="without projections, got proj_size=2"):
        RNN.from_torch(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match="expected a torch.nn.RNN, GRU or LSTM, got Linear"):
        RNN.from_torch(nn.Linear(3, 4))


@pytest.mark.parametrize("batch_first", [True, False])
def test_layer_major_forward_equals_seed_step_loop(batch_first):
    torch.manual_seed(0)
    rnn = RNN(5, 8, num_layers=3, batch_first=batch_first).double()
    x = torch.randn(4, 11, 5, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    h0 = torch.randn(3, 4, 8, dtype=torch.float64)
    out_fast, hn_fast = rnn(x, h0)
    out_loop, hn_loop = rnn.forward_stepwise(x, h0)
    torch.testing.assert_close(out_fast, out_loop, atol=1e-12, rtol=0)
    torch.testing.assert_close(hn_fast, hn_loop, atol=1e-12, rtol=0)
    # The cell itself is the seed's formula.
    cell = rnn.cells[0]
    x_t, h = x.select(1 if batch_first else 0, 0), h0[0]
    expected = torch.tanh(x_t @ cell.Wxh.weight.T + cell.Wxh.bias + h @ cell.Whh.weight.T + cell.Whh.bias)
    torch.testing.assert_close(cell(x_t, h), expected, atol=1e-12, rtol=0)


def test_step_streams_one_time_step_through_all_layers():
    torch.manual_seed(1)
    rnn = RNN(3, 6, num_layers=2).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    outputs, h_n = rnn(x)
    h = None
    for t in range(9):
        h = rnn.step(x[:, t], h)
        torch.testing.assert_close(h[-1], outputs[:, t], atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h_n, atol=1e-12, rtol=0)


def test_streaming_in_chunks_equals_one_call():
    torch.manual_seed(2)
    rnn = RNN(4, 7, num_layers=2).double()
    x = torch.randn(3, 20, 4, dtype=torch.float64)
    full_out, full_h = rnn(x)
    h, outs = None, []
    for chunk in x.split([5, 1, 8, 6], dim=1):
        out, h = rnn(chunk, h)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(h, full_h, atol=1e-12, rtol=0)


def test_gradcheck_rnn_float64():
    torch.manual_seed(3)
    rnn = RNN(3, 4, num_layers=2).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(rnn.parameters())

    def fn(x, h0, *weights):
        state = dict(zip((n for n, _ in rnn.named_parameters()), weights))
        out, h_n = torch.func.functional_call(rnn, state, (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(fn, (x, h0, *[p.detach().clone().requires_grad_() for p in params]))


def test_dropout_is_only_between_layers_and_only_in_training():
    torch.manual_seed(4)
    x = torch.randn(8, 12, 5)
    # One layer: there is no "between layers", so dropout never applies, even in training.
    single = RNN(5, 16, num_layers=1, dropout=0.9)
    single.train()
    out_train, h_train = single(x)
    single.eval()
    out_eval, h_eval = single(x)
    torch.testing.assert_close(out_train, out_eval, atol=0, rtol=0)
    torch.testing.assert_close(h_train, h_eval, atol=0, rtol=0)

    stacked = RNN(5, 16, num_layers=2, dropout=0.5)
    stacked.eval()
    ref = stacked.to_torch().eval()
    torch.testing.assert_close(stacked(x)[0], ref(x)[0])  # eval: no dropout at all
    stacked.train()
    torch.manual_seed(5)
    out_a, hn_a = stacked(x)
    torch.manual_seed(5)
    out_b, _ = stacked(x)
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)  # same seed, same mask
    assert not torch.allclose(out_a, stacked.eval()(x)[0])  # training applies dropout...
    # ...to the first layer's output only: its final state is untouched by dropout, and
    # the top layer's output is never zeroed (tanh of a random pre-activation is not 0).
    torch.testing.assert_close(hn_a[0], stacked(x)[1][0])
    assert (out_a != 0).all()


def test_dropout_feeds_the_next_layer_with_inverted_scaling():
    # Rebuild the two-layer computation by hand: layer 2 must see dropout(h1), with the
    # same mask when the RNG is in the same state.
    torch.manual_seed(6)
    rnn = RNN(3, 4, num_layers=2, dropout=0.5).double().train()
    first_layer, second_layer = _one_layer(rnn, 0), _one_layer(rnn, 1)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    torch.manual_seed(7)
    out, _ = rnn(x)
    torch.manual_seed(7)
    first, _ = first_layer(x)
    second, _ = second_layer(Dropout(0.5)(first))
    torch.testing.assert_close(out, second, atol=1e-12, rtol=0)


def _one_layer(rnn, layer):
    single = RNN(rnn.cells[layer].input_size, rnn.hidden_size).double()
    single.cells[0].load_state_dict(rnn.cells[layer].state_dict())
    return single


def test_rnn_cell_init_and_shapes():
    cell = RNNCell(10, 64)
    assert torch.count_nonzero(cell.Wxh.bias) == 0 and torch.count_nonzero(cell.Whh.bias) == 0
    bound = (6 / (10 + 64)) ** 0.5  # Xavier-uniform bound
    assert cell.Wxh.weight.abs().max() <= bound and cell.Wxh.weight.abs().max() > 0.8 * bound
    assert cell(torch.randn(32, 10), torch.zeros(32, 64)).shape == (32, 64)
    assert "bias=False" in repr(RNNCell(3, 4, bias=False))
    assert "num_layers=2, dropout=0.2" in repr(RNN(10, 64, 2, dropout=0.2))


def test_dropout_module_matches_torch_dropout_contract():
    torch.manual_seed(9)
    x = torch.randn(200, 300, dtype=torch.float64, requires_grad=True)
    drop = Dropout(0.3)
    assert drop.training and "p=0.3" in repr(drop)
    y = drop(x)
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.7) < 0.01  # 60,000 draws: std 0.0019
    torch.testing.assert_close(y[kept], x[kept] / 0.7, atol=1e-12, rtol=0)  # inverted scaling
    (grad,) = torch.autograd.grad((y * 2).sum(), x)
    torch.testing.assert_close(grad, kept.double() * 2 / 0.7, atol=1e-12, rtol=0)  # same mask backward
    torch.manual_seed(10)
    a = drop(x)
    torch.manual_seed(10)
    assert torch.equal(a, drop(x))  # the global generator decides the mask
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"expected p in \[0, 1\), got 1.0"):
        Dropout(1.0)


@pytest.mark.parametrize("p", [0.02, 0.25, 0.5, 0.9])
def test_the_cpu_mask_drops_each_element_with_probability_p_independently(p):
    """kernels/dropout.py cuts each 64-bit draw into four 16-bit elements: every one of the
    four positions is dropped with probability p, neighbours independently of each other."""
    torch.manual_seed(0)
    x = torch.empty(1000, 1000)
    keep = keep_mask(x, p)
    assert keep.dtype == torch.bool and keep.shape == x.shape
    dropped = (~keep).double().view(-1, 4)  # the four elements of each draw
    sd = (p * (1 - p) / dropped.shape[0]) ** 0.5
    assert (dropped.mean(0) - p).abs().max() < 5 * sd  # 250,000 draws per position
    pairs = (dropped[:, 0] * dropped[:, 1]).mean().item()  # P(both dropped) = p^2 if independent
    assert abs(pairs - p * p) < 5 * (p * p * (1 - p * p) / dropped.shape[0]) ** 0.5
    # The mask follows x's memory layout, as torch.rand_like does: a transposed x gets the
    # transpose of the mask the same draws give a contiguous one.
    torch.manual_seed(1)
    contiguous = keep_mask(torch.empty(20, 30), p)
    torch.manual_seed(1)
    assert torch.equal(keep_mask(torch.empty(20, 30).t(), p), contiguous.t())


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_the_step_loop_returns_every_steps_states_and_takes_a_projected_input(cell):
    """RNN.step_layers is the one time-major loop (forward_stepwise, analysis, generation)."""
    torch.manual_seed(0)
    rnn = RNN(5, 8, num_layers=2, cell=cell).eval()
    x = torch.randn(3, 6, 5)
    outputs, h_n, states = rnn.forward_stepwise(x, return_states=True)
    assert len(states) == 6 and all(len(step) == 2 for step in states)
    torch.testing.assert_close(torch.stack([step[-1][0] for step in states], dim=1), outputs)
    final = h_n if isinstance(h_n, tuple) else (h_n,)
    for i, part in enumerate(final):  # h_n (and c_n): the last step's state of every layer
        torch.testing.assert_close(torch.stack([layer[i] for layer in states[-1]]), part)
    torch.testing.assert_close(outputs, rnn(x)[0], atol=1e-6, rtol=1e-5)
    # The projections given in advance (as generation folds the embedding into layer 0's).
    start = [tuple(torch.randn(3, 8) for _ in range(2 if cell == "lstm" else 1)) for _ in range(2)]
    direct = rnn.step_layers(x[:, 0], start)
    table = rnn.cells[0].project(x[:, 0])  # (3, G*H): row b is sequence b's projected step
    projected = rnn.step_layers(torch.arange(3), start, [table.__getitem__, rnn.cells[1].project])
    for a, b in zip(direct, projected):
        for sa, sb in zip(a, b):
            torch.testing.assert_close(sa, sb)


def test_reprs_name_every_setting_that_differs_from_the_default_as_torch_nn_does():
    # Printing a model is how a user checks what was built: each non-default argument
    # appears once, in torch.nn.RNN's order and spelling, and the defaults stay quiet.
    from rnnlab.models import BidirectionalRNN, GRUCell
    assert RNN(10, 64).extra_repr() == "10, 64"
    assert RNN(3, 4, 3, dropout=0.5, bias=False, batch_first=False, cell="gru").extra_repr() == \
        "3, 4, num_layers=3, dropout=0.5, bias=False, batch_first=False, cell='gru'"
    assert RNNCell(3, 4).extra_repr() == "3, 4"
    assert RNNCell(3, 4, nonlinearity="relu").extra_repr() == "3, 4, nonlinearity='relu'"
    assert GRUCell(3, 4, bias=False).extra_repr() == "3, 4, bias=False"
    assert BidirectionalRNN(3, 4).extra_repr() == "3, 4, num_layers=1"
    assert BidirectionalRNN(3, 4, 2, cell="lstm").extra_repr() == "3, 4, num_layers=2, cell='lstm'"
    assert Dropout(0.25).extra_repr() == "p=0.25"


def test_one_step_names_each_wrong_input_exactly():
    # RNNCell/LSTMCell.forward and RNN.step take one time step; each wrong input is named
    # with what was expected and what came (the first check that fails, not a torch error).
    from rnnlab.models import LSTMCell
    cell, lstm, rnn = RNNCell(3, 4), LSTMCell(3, 4), RNN(3, 4, num_layers=2)
    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    cases = [
        (lambda: cell(torch.randn(2, 5), h), ValueError, "expected x of shape (B, 3), got (2, 5)"),
        (lambda: cell(torch.randn(2, 1, 3), h), ValueError, "expected x of shape (B, 3), got (2, 1, 3)"),
        (lambda: cell([[0.0] * 3], h), ValueError, "expected x of shape (B, 3), got list"),
        (lambda: cell(x.double(), h), TypeError,
         "expected x of dtype torch.float32 (the module's parameters), got torch.float64"),
        (lambda: cell(x, torch.zeros(3, 4)), ValueError, "expected h_prev of shape (2, 4), got (3, 4)"),
        (lambda: lstm(x, [h, h]), TypeError, "expected the LSTM state as a tuple (h, c), got list"),
        (lambda: lstm(x, (h, torch.zeros(2, 5))), ValueError, "expected c_prev of shape (2, 4), got (2, 5)"),
        (lambda: lstm(x, (h, h.double())), TypeError,
         "expected c_prev of dtype torch.float32 (the module's parameters), got torch.float64"),
        (lambda: rnn.step(torch.randn(2, 4)), ValueError, "expected x_t of shape (B, 3), got (2, 4)"),
        (lambda: rnn.step("x"), ValueError, "expected x_t of shape (B, 3), got str"),
        (lambda: rnn.step(x.double()), TypeError,
         "expected x_t of dtype torch.float32 (the module's parameters), got torch.float64"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as raised:
            call()
        assert str(raised.value) == message


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_one_cell_step_equals_torch_rnn_cell(nonlinearity):
    torch.manual_seed(0)
    ours, ref = RNNCell(3, 5, nonlinearity=nonlinearity).double(), nn.RNNCell(3, 5, nonlinearity=nonlinearity).double()
    with torch.no_grad():
        ours.Wxh.weight.copy_(ref.weight_ih), ours.Wxh.bias.copy_(ref.bias_ih)
        ours.Whh.weight.copy_(ref.weight_hh), ours.Whh.bias.copy_(ref.bias_hh)
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x, h), ref(x, h), atol=1e-12, rtol=0)
    torch.testing.assert_close(ours.recur(ours.project(x), (h,))[0], ref(x, h), atol=1e-12, rtol=0)


def test_the_lstm_starts_with_a_forget_bias_of_one_and_every_other_bias_zero():
    from rnnlab.models import LSTMCell

    H = 6
    cell = LSTMCell(3, H)
    total = (cell.Wxh.bias + cell.Whh.bias).detach()  # (4H,): i, f, g, o
    torch.testing.assert_close(total, torch.cat([torch.zeros(H), torch.ones(H), torch.zeros(2 * H)]))
    assert torch.equal(cell.Wxh.bias.detach(), cell.Whh.bias.detach())  # split evenly over the two layers
    assert LSTMCell(3, H, bias=False).Wxh.bias is None
