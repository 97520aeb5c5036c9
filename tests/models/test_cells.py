"""GRU, LSTM and ReLU cells against torch.nn, variable-length batches against packed sequences."""

import itertools
import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import TORCH_RNNS, flat_state
from rnnlab.models import RNN, BidirectionalRNN, CharRNN, GRUCell, LSTMCell, SequenceClassifier, SequenceTagger


def _state(cell, L, B, H, dtype=torch.float64):
    h = torch.randn(L, B, H, dtype=dtype)
    return (h, torch.randn(L, B, H, dtype=dtype)) if cell == "lstm" else h


@pytest.mark.parametrize("cell,num_layers,batch_first,give_h0,bias",
                         list(itertools.product(["rnn_relu", "gru", "lstm"], [1, 2, 3], [True, False], [True, False],
                                                [True, False])))
def test_parity_with_torch_gru_lstm_relu(cell, num_layers, batch_first, give_h0, bias):
    rng = random.Random(f"{cell}{num_layers}{batch_first}{give_h0}{bias}")
    B, T, D, H = rng.randint(1, 4), rng.randint(1, 8), rng.randint(1, 6), rng.randint(1, 7)
    torch.manual_seed(rng.randint(0, 10_000))
    ref = TORCH_RNNS[cell](D, H, num_layers, batch_first=batch_first, bias=bias).double()
    mine = RNN.from_torch(ref)
    assert mine.cell == cell
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=torch.float64)
    h0 = _state(cell, num_layers, B, H) if give_h0 else None

    def run(module):
        xi = x.clone().requires_grad_()
        hi = tuple(s.clone().requires_grad_() for s in flat_state(h0)) if give_h0 else None
        h_arg = (hi if cell == "lstm" else hi[0]) if give_h0 else None
        out, h_n = module(xi, h_arg)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        loss = loss + sum((s ** 2).sum() for s in flat_state(h_n))
        loss.backward()
        return out, flat_state(h_n), xi.grad, [s.grad for s in hi] if give_h0 else []

    out_r, hn_r, gx_r, gh_r = run(ref)
    out_m, hn_m, gx_m, gh_m = run(mine)
    close = dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out_m, out_r, **close)
    for a, b in zip(hn_m, hn_r, strict=True):
        torch.testing.assert_close(a, b, **close)
    torch.testing.assert_close(gx_m, gx_r, **close)
    for a, b in zip(gh_m, gh_r, strict=True):
        torch.testing.assert_close(a, b, **close)
    for ours, theirs in mine.weight_pairs(ref):
        torch.testing.assert_close(ours.grad, theirs.grad, **close)


@pytest.mark.parametrize("cell,uses", [(cell, uses) for cell in ["rnn_tanh", "rnn_relu", "gru", "lstm"]
                                       for uses in ["outputs", "h_n", "top_h_n"] + (["c_n"] if cell == "lstm" else [])])
def test_parity_when_the_loss_reads_only_some_results(cell, uses):
    # The recurrences skip the gradient of a result nothing read (a classifier reads only
    # h_n[-1]; a tagger only the outputs): their gradients must still match torch.nn's.
    torch.manual_seed(3)
    ref = TORCH_RNNS[cell](3, 5, 2, batch_first=True).double()
    mine = RNN.from_torch(ref)
    x = torch.randn(4, 6, 3, dtype=torch.float64)

    def run(module):
        xi = x.clone().requires_grad_()
        out, h_n = module(xi)
        h, c = h_n if cell == "lstm" else (h_n, None)
        picked = {"outputs": out, "h_n": h, "c_n": c, "top_h_n": h[-1]}[uses]
        (picked * torch.linspace(-1, 1, picked.numel(), dtype=picked.dtype).view_as(picked)).sum().backward()
        return xi.grad

    close = dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(run(mine), run(ref), **close)
    for ours, theirs in mine.weight_pairs(ref):
        torch.testing.assert_close(ours.grad, theirs.grad, **close)


@pytest.mark.parametrize("cell", ["rnn_relu", "gru", "lstm"])
def test_round_trip_and_step_loop(cell):
    torch.manual_seed(0)
    mine = RNN(3, 5, num_layers=2, cell=cell).double()
    ref = mine.to_torch()
    assert type(ref) is type(TORCH_RNNS[cell](3, 5))
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(mine(x)[0], ref(x)[0], atol=1e-12, rtol=0)
    # The fast layer-major path equals the seed's step loop for every cell.
    h0 = _state(cell, 2, 2, 5)
    fast_out, fast_h = mine(x, h0)
    loop_out, loop_h = mine.forward_stepwise(x, h0)
    torch.testing.assert_close(fast_out, loop_out, atol=1e-12, rtol=0)
    for a, b in zip(flat_state(fast_h), flat_state(loop_h), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # Streaming in chunks carries the (h, c) state.
    first_out, state = mine(x[:, :3], h0)
    second_out, state = mine(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([first_out, second_out], 1), fast_out, atol=1e-12, rtol=0)


def test_cells_match_torch_cells_one_step():
    torch.manual_seed(1)
    for ours, theirs in ((GRUCell(4, 6), nn.GRUCell(4, 6)), (LSTMCell(4, 6), nn.LSTMCell(4, 6))):
        with torch.no_grad():
            theirs.weight_ih.copy_(ours.Wxh.weight), theirs.weight_hh.copy_(ours.Whh.weight)
            theirs.bias_ih.copy_(ours.Wxh.bias), theirs.bias_hh.copy_(ours.Whh.bias)
        x, h = torch.randn(3, 4), torch.randn(3, 6)
        if isinstance(ours, LSTMCell):
            c = torch.randn(3, 6)
            for a, b in zip(ours(x, (h, c)), theirs(x, (h, c))):
                torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(ours(x, h), theirs(x, h))
    lstm = LSTMCell(4, 6)
    assert torch.equal(lstm.Wxh.bias[6:12] + lstm.Whh.bias[6:12], torch.ones(6))  # forget bias 1


@pytest.mark.parametrize("cell,num_layers", list(itertools.product(["rnn_tanh", "rnn_relu", "gru", "lstm"], [1, 2])))
def test_variable_lengths_match_packed_sequences(cell, num_layers):
    torch.manual_seed(2)
    ref = TORCH_RNNS[cell](4, 6, num_layers, batch_first=True).double()
    mine = RNN.from_torch(ref)
    lengths = torch.tensor([7, 3, 5, 1])
    x = torch.randn(4, 7, 4, dtype=torch.float64)
    h0 = _state(cell, num_layers, 4, 6)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, ref_h = ref(packed, h0)
    ref_out, _ = pad_packed_sequence(ref_out, batch_first=True, total_length=7)
    out, h_n = mine(x, h0, lengths=lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)  # zeros past each length
    for a, b in zip(flat_state(h_n), flat_state(ref_h), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)  # state at each sequence's last step
    # Padding content is irrelevant.
    noisy = x.clone()
    noisy[1, 3:] = 99.0
    torch.testing.assert_close(mine(noisy, h0, lengths=lengths)[0], out, atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_bidirectional_with_lengths_matches_packed_bidirectional_torch(cell):
    torch.manual_seed(3)
    ref = TORCH_RNNS[cell](3, 5, 1, batch_first=True, bidirectional=True).double()
    mine = BidirectionalRNN(3, 5, num_layers=1, cell=cell).double()
    with torch.no_grad():
        for stack, suffix in ((mine.forward_rnn, ""), (mine.backward_rnn, "_reverse")):
            c = stack.cells[0]
            for ours, name in ((c.Wxh.weight, "weight_ih"), (c.Whh.weight, "weight_hh"),
                               (c.Wxh.bias, "bias_ih"), (c.Whh.bias, "bias_hh")):
                ours.copy_(getattr(ref, f"{name}_l0{suffix}"))
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, ref_h = ref(packed)
    ref_out, _ = pad_packed_sequence(ref_out, batch_first=True, total_length=6)
    out, h_n = mine(x, lengths=lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for a, b in zip(flat_state(h_n), flat_state(ref_h), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", ["rnn_relu", "gru", "lstm"])
def test_every_architecture_takes_every_cell(cell):
    torch.manual_seed(4)
    x, lengths = torch.randn(3, 9, 5), torch.tensor([9, 4, 6])
    clf = SequenceClassifier(5, 8, 3, cell=cell).eval()
    assert clf(x).shape == (3, 3)
    # The classifier reads each sequence's own final state: padding changes nothing.
    padded = x.clone()
    padded[1, 4:] = 0.0
    torch.testing.assert_close(clf(x, lengths)[1], clf(padded[1:2, :4])[0], atol=1e-6, rtol=1e-5)
    for bidirectional in (False, True):
        assert SequenceTagger(5, 8, 4, bidirectional=bidirectional, cell=cell)(x, lengths).shape == (3, 9, 4)
    lm = CharRNN(11, 4, 8, num_layers=2, cell=cell).eval()
    logits, state = lm(torch.randint(0, 11, (2, 5)))
    assert logits.shape == (2, 5, 11) and isinstance(state, tuple) == (cell == "lstm")
    generated = lm.generate(torch.randint(0, 11, (2, 3)), 6, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (2, 9)
    rnn = RNN(5, 8, num_layers=2, cell=cell)
    state = rnn.step(x[:, 0])
    assert isinstance(state, tuple) == (cell == "lstm")


def test_lstm_state_errors_are_clear():
    lstm = RNN(3, 4, num_layers=2, cell="lstm")
    with pytest.raises(TypeError, match=r"expected h0 as a tuple \(h, c\) for cell='lstm', got Tensor"):
        lstm(torch.randn(2, 5, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"expected h0\[1\] \(c\) of shape \(2, 2, 4\), got \(2, 2, 5\)"):
        lstm(torch.randn(2, 5, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5)))
    with pytest.raises(TypeError, match="expected h0 as one tensor for cell='gru', got a tuple"):
        RNN(3, 4, cell="gru")(torch.randn(2, 5, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match=r"expected cell in \['gru', 'indrnn', 'ln_lstm', 'lstm', 'min_gru', "
                                         r"'min_lstm', 'rnn_relu', 'rnn_tanh'\], got 'transformer'"):
        RNN(3, 4, cell="transformer")


def test_lengths_errors_are_clear():
    rnn = RNN(3, 4)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"expected lengths in \[1, 5\] \(T\), got values from 0 to 5"):
        rnn(x, lengths=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"expected lengths of shape \(2,\), got \(3\)"):
        rnn(x, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="expected lengths as an int64 tensor of shape \\(2,\\), got torch.float32"):
        rnn(x, lengths=torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("cell,bias,with_lengths",
                         list(itertools.product(["rnn_relu", "gru", "lstm"], [True, False], [False, True])))
def test_gradcheck_every_cell_path(cell, bias, with_lengths):
    # Without lengths the hand-written backward of the cell's recurrence runs; with lengths,
    # autograd through the masked step loop. Both are checked against finite differences,
    # for the input, h0 (and c0) and every weight.
    torch.manual_seed(5)
    rnn = RNN(2, 3, num_layers=2, cell=cell, bias=bias).double()
    names = [n for n, _ in rnn.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in rnn.parameters()]
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = [s.requires_grad_() for s in flat_state(_state(cell, 2, 2, 3))]
    kwargs = {"lengths": torch.tensor([4, 2])} if with_lengths else {}

    def fn(x, *args):
        state, ws = (tuple(args[:2]), args[2:]) if cell == "lstm" else (args[0], args[1:])
        out, h_n = torch.func.functional_call(rnn, dict(zip(names, ws)), (x, state), kwargs)
        return out, *flat_state(h_n)

    assert torch.autograd.gradcheck(fn, (x, *h0, *weights))


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_generation_step_equals_full_forward(cell):
    torch.manual_seed(8)
    lm = CharRNN(12, 8, 16, num_layers=3, cell=cell).eval()
    seq = torch.randint(0, 12, (2, 9))
    full_logits, full_state = lm(seq)
    _, state = lm(seq[:, :4])
    layers = [tuple(s[layer] for s in flat_state(state)) for layer in range(3)]
    step = lm.decoder()
    for t in range(4, 9):
        logits, layers = step(seq[:, t], layers)  # reads token t: the logits at position t
        torch.testing.assert_close(logits, full_logits[:, t], atol=1e-6, rtol=1e-5)
    for i, s in enumerate(flat_state(full_state)):
        torch.testing.assert_close(torch.stack([layer[i] for layer in layers]), s, atol=1e-6, rtol=1e-5)
    # generate() samples from those steps: with top_k=1 it is argmax decoding of the full forward.
    greedy = seq[:, :4]
    for _ in range(8):
        greedy = torch.cat([greedy, lm(greedy)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(lm.generate(seq[:, :4], 8, top_k=1), greedy)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_generation_step_in_training_mode_drops_out_as_the_forward_does(cell):
    """In training mode the one-token decoder applies dropout between layers and before the
    head as forward does on a (B, 1) input: the same random draws give the same logits and
    states, and they differ from the step without dropout."""
    torch.manual_seed(9)
    lm = CharRNN(12, 8, 16, num_layers=3, dropout=0.5, cell=cell).train()
    seq = torch.randint(0, 12, (2, 9))
    with torch.no_grad():
        _, state = lm.eval()(seq[:, :4])
        lm.train()
        layers = [tuple(s[layer] for s in flat_state(state)) for layer in range(3)]
        step = lm.decoder()
        for t in range(4, 9):
            torch.manual_seed(100 + t)
            logits, new_layers = step(seq[:, t], layers)
            torch.manual_seed(100 + t)
            full_logits, full_state = lm(seq[:, t:t + 1], state)
            torch.testing.assert_close(logits, full_logits[:, 0], atol=1e-6, rtol=1e-5)
            for i, s in enumerate(flat_state(full_state)):
                torch.testing.assert_close(torch.stack([layer[i] for layer in new_layers]), s, atol=1e-6, rtol=1e-5)
            lm.eval()
            plain_logits, plain_layers = lm.decoder()(seq[:, t], layers)
            lm.train()
            assert not torch.allclose(plain_logits, logits, atol=1e-3)
            assert not torch.allclose(plain_layers[-1][0], new_layers[-1][0], atol=1e-3)  # between layers too
            layers, state = new_layers, full_state
