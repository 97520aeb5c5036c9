"""Locked dropout, weight drop, zoneout, embedding dropout and weight tying do what their
papers say: masks constant over time or over a forward pass, evaluation deterministic and
equal to the expectation, gradients through the dropped weights, one shared tensor."""

import pytest
import torch

from rnnlab.models import RNN, CharRNN, SequenceTagger
from rnnlab.models.regularisers import LockedDropout, WeightDrop, embedding_dropout


# ------------------------------------------------------------------ locked dropout
def test_locked_dropout_draws_one_mask_per_sequence():
    torch.manual_seed(0)
    drop = LockedDropout(0.4, time_dim=1).train()
    out = drop(torch.ones(64, 30, 50))
    kept = out != 0  # (B, T, D)
    assert (kept == kept[:, :1]).all()  # the same at every step
    assert abs(1 - kept[:, 0].float().mean().item() - 0.4) < 0.03
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.6))
    x = torch.randn(4, 5, 6)
    assert drop.eval()(x) is x


def test_locked_dropout_defaults_and_a_time_dimension_given_per_call():
    torch.manual_seed(1)
    drop = LockedDropout().train()
    assert (drop.p, drop.time_dim) == (0.5, 1)
    kept = drop(torch.ones(40, 7, 30)) != 0  # (B, T, D): one mask per row, shared along T
    assert (kept == kept[:, :1]).all() and abs(kept.float().mean().item() - 0.5) < 0.05
    kept = drop(torch.ones(7, 40, 30), time_dim=0) != 0  # (T, B, D) given for this call
    assert (kept == kept[:1]).all() and not (kept == kept[:, :1]).all()
    x = torch.randn(3, 4, 5)
    assert torch.equal(LockedDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"^expected p in \[0, 1\), got 1.5$"):
        LockedDropout(1.5)


def test_rnn_locked_dropout_between_layers_in_both_loops():
    """The input of layer 2 has the same zeroed units at every step, in forward (time-major
    (T, B, H)) and in forward_stepwise; without locking the pattern changes over time."""
    torch.manual_seed(1)
    seen = []

    def record(cell):
        project = cell.project
        cell.project = lambda x: (seen.append(x.detach().clone()), project(x))[1]

    for locked in (True, False):
        rnn = RNN(3, 40, num_layers=2, dropout=0.5, cell="gru", locked_dropout=locked).train()
        record(rnn.cells[1])
        x = torch.randn(8, 12, 3)
        seen.clear()
        rnn(x)
        zeros = seen[0].view(12, 8, 40) == 0  # (T, B, H): the layer projects all steps at once, (T*B, H)
        assert zeros.any()
        assert (zeros == zeros[:1]).all() == locked
        seen.clear()
        rnn.forward_stepwise(x)
        zeros = torch.stack(seen) == 0  # (T, B, H): one x_t per step
        assert (zeros == zeros[:1]).all() == locked


def test_char_rnn_and_tagger_lock_their_own_dropouts():
    lm = CharRNN(10, 8, 8, num_layers=2, locked_dropout=True, input_dropout=0.3)
    assert isinstance(lm.input_dropout, LockedDropout) and isinstance(lm.output_dropout, LockedDropout)
    assert isinstance(lm.rnn.layer_dropout, LockedDropout)
    tagger = SequenceTagger(3, 8, 4, locked_dropout=True)
    assert isinstance(tagger.head_dropout, LockedDropout)


# ------------------------------------------------------------------ weight drop
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm", "ln_lstm", "indrnn"])
def test_weight_drop_uses_one_dropped_weight_per_forward_pass(cell):
    """One evaluation of the parametrization per layer and forward pass, and the fast
    recurrence's output equals a model without weight drop holding that dropped weight."""
    torch.manual_seed(2)
    rnn = RNN(4, 16, num_layers=2, cell=cell, weight_drop=0.5).train()
    dropped = []
    for module in rnn.modules():
        if isinstance(module, WeightDrop):
            module.register_forward_hook(lambda m, args, out: dropped.append(out.detach().clone()))
    x = torch.randn(3, 9, 4)
    out, _ = rnn(x)
    assert len(dropped) == 2  # once per layer for the whole sequence
    name = "u" if cell == "indrnn" else "Whh.weight"
    for w in dropped:
        assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.15)
    plain = RNN(4, 16, num_layers=2, cell=cell).train()
    plain.load_state_dict({k.replace("parametrizations.weight.original", "weight")
                           .replace("parametrizations.u.original", "u"): v for k, v in rnn.state_dict().items()})
    with torch.no_grad():
        for layer, w in enumerate(dropped):
            target = plain.cells[layer]
            (target.u if cell == "indrnn" else target.Whh.weight).copy_(w)
    torch.testing.assert_close(out, plain(x)[0], atol=1e-6, rtol=1e-6)
    # step by step, the same mask at every step of one forward pass
    dropped.clear()
    rnn.forward_stepwise(x)
    assert len(dropped) == 2, name


def test_weight_drop_zeroes_a_share_p_of_the_weight_and_rescales_the_rest():
    torch.manual_seed(5)
    drop = WeightDrop(0.2).train()
    weight = torch.full((300, 300), 2.0)
    dropped = drop(weight)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    torch.testing.assert_close(dropped[dropped != 0], torch.full_like(dropped[dropped != 0], 2.0 / 0.8))
    with pytest.raises(ValueError, match=r"^expected weight_drop in \[0, 1\), got 1.0$"):
        WeightDrop(1.0)


def test_weight_drop_gradient_flows_through_the_kept_weights_only():
    torch.manual_seed(3)
    rnn = RNN(4, 8, cell="lstm", weight_drop=0.5).train()
    masks = []
    rnn.cells[0].Whh.parametrizations.weight[0].register_forward_hook(lambda m, a, out: masks.append(out != 0))
    out, _ = rnn(torch.randn(2, 6, 4))
    out.sum().backward()
    grad = rnn.cells[0].Whh.parametrizations.weight.original.grad
    assert (grad[~masks[0]] == 0).all() and (grad[masks[0]] != 0).any()


def test_weight_drop_is_the_identity_in_eval_and_deterministic():
    torch.manual_seed(4)
    rnn = RNN(4, 8, cell="gru", weight_drop=0.5)
    plain = RNN(4, 8, cell="gru")
    plain.load_state_dict({k.replace("parametrizations.weight.original", "weight"): v
                           for k, v in rnn.state_dict().items()})
    x = torch.randn(2, 5, 4)
    rnn.eval(), plain.eval()
    torch.testing.assert_close(rnn(x)[0], plain(x)[0], atol=0, rtol=0)
    torch.testing.assert_close(rnn(x)[0], rnn(x)[0], atol=0, rtol=0)
    torch.testing.assert_close(rnn.to_torch()(x)[0], plain(x)[0], atol=1e-6, rtol=1e-6)  # the weight itself


def test_weight_drop_needs_recurrent_weights():
    with pytest.raises(ValueError, match="weight_drop: cell='min_gru' has no recurrent weights"):
        RNN(3, 4, cell="min_gru", weight_drop=0.3)


# ------------------------------------------------------------------ zoneout
@pytest.mark.parametrize("cell", ["gru", "lstm", "min_gru"])
def test_zoneout_keeps_each_unit_with_probability_p_in_training(cell):
    """Each unit of each step is either its previous value or the cell's new one, the
    previous with frequency p (h and c for the LSTM alike)."""
    torch.manual_seed(5)
    rnn = RNN(3, 64, cell=cell, zoneout=0.3).train()
    layer = rnn.cells[0]
    x = torch.randn(16, 20, 3)
    steps = rnn.forward_stepwise(x, return_states=True)[2]
    kept = total = 0
    previous = (torch.zeros(16, 64),) * layer.state_size
    for t, layers in enumerate(steps):
        state = layers[0]
        new = layer.recur(layer.project(x[:, t]), previous)
        for s, o, n in zip(state, previous, new):
            is_old, is_new = torch.isclose(s, o), torch.isclose(s, n)
            assert (is_old | is_new).all()
            kept += (is_old & ~is_new).sum().item()
            total += (is_old ^ is_new).sum().item()
        previous = state
    assert kept / total == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_zoneout_in_eval_is_the_expectation_and_forward_equals_the_step_loop(cell):
    torch.manual_seed(6)
    rnn = RNN(3, 8, num_layers=2, cell=cell, zoneout=0.25).double().eval()
    x = torch.randn(4, 10, 3, dtype=torch.float64)
    out, h_n = rnn(x)
    expected_out, expected_h_n = rnn.forward_stepwise(x)
    torch.testing.assert_close(out, expected_out, atol=1e-12, rtol=0)
    layers = [(torch.zeros(4, 8, dtype=torch.float64),) * rnn.cells[0].state_size for _ in range(2)]
    outs = []
    for t in range(10):  # written out: s_t = p s_{t-1} + (1 - p) cell(s_{t-1})
        x_t = x[:, t]
        for layer, cell_ in enumerate(rnn.cells):
            new = cell_.recur(cell_.project(x_t), layers[layer])
            layers[layer] = tuple(0.25 * o + 0.75 * n for o, n in zip(layers[layer], new))
            x_t = layers[layer][0]
        outs.append(x_t)
    torch.testing.assert_close(out, torch.stack(outs, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(rnn(x)[0], out, atol=0, rtol=0)  # deterministic


def test_zoneout_with_lengths_keeps_ended_sequences_state():
    torch.manual_seed(7)
    rnn = RNN(3, 8, cell="lstm", zoneout=0.2).double().eval()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    out, (h_n, c_n) = rnn(x, lengths=torch.tensor([9, 4]))
    short_out, (short_h, short_c) = rnn(x[1:, :4])
    torch.testing.assert_close(out[1, :4], short_out[0], atol=1e-12, rtol=0)
    assert (out[1, 4:] == 0).all()
    torch.testing.assert_close(h_n[:, 1], short_h[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(c_n[:, 1], short_c[:, 0], atol=1e-12, rtol=0)


# ------------------------------------------------------------------ embedding dropout, tying
def test_embedding_dropout_drops_whole_tokens():
    torch.manual_seed(8)
    emb = torch.nn.Embedding(200, 6)
    idx = torch.randint(0, 200, (32, 40))
    out = embedding_dropout(emb, idx, 0.3, training=True)
    dropped = (out == 0).all(-1)  # (B, T)
    for token in idx.unique():
        at = dropped[idx == token]
        assert at.all() or not at.any()  # every occurrence, or none
    rate = 1 - len(idx[~dropped].unique()) / len(idx.unique())
    assert rate == pytest.approx(0.3, abs=0.1)
    torch.testing.assert_close(out[~dropped], emb(idx)[~dropped] / 0.7)
    torch.testing.assert_close(embedding_dropout(emb, idx, 0.3, training=False), emb(idx))


def test_weight_tying_shares_one_tensor():
    tied = CharRNN(30, 16, 16, num_layers=2, tie_weights=True)
    untied = CharRNN(30, 16, 16, num_layers=2)
    assert tied.fc.weight is tied.embedding.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 30 * 16
    logits, _ = tied(torch.randint(0, 30, (2, 7)))
    logits.sum().backward()
    assert tied.embedding.weight.grad is tied.fc.weight.grad
    copy = CharRNN(30, 16, 16, num_layers=2, tie_weights=True)
    copy.load_state_dict(tied.state_dict())
    assert copy.fc.weight is copy.embedding.weight
    torch.testing.assert_close(copy.fc.weight, tied.embedding.weight)
    with pytest.raises(ValueError, match="embed_dim == hidden_size"):
        CharRNN(30, 8, 16, tie_weights=True)
