"""The seed's four architectures: sizes, shapes, bidirectional parity, CharRNN generation."""

import pytest
import torch
from torch import nn

from rnnlab.models import RNN, BidirectionalRNN, CharRNN, SequenceClassifier, SequenceTagger


def test_seed_classifier_has_13314_parameters():
    model = SequenceClassifier(input_size=10, hidden_size=64, num_classes=2, num_layers=2)
    assert sum(p.numel() for p in model.parameters()) == 13_314


def test_output_shapes_of_every_architecture():
    x = torch.randn(4, 20, 10)
    assert SequenceClassifier(10, 64, 3)(x).shape == (4, 3)
    assert SequenceTagger(10, 16, 5)(x).shape == (4, 20, 5)
    assert SequenceTagger(10, 16, 5, bidirectional=True)(x).shape == (4, 20, 5)
    out, h_n = BidirectionalRNN(10, 16, num_layers=2)(x)
    assert out.shape == (4, 20, 32) and h_n.shape == (4, 4, 16)
    logits, h_n = CharRNN(30, 8, 16)(torch.randint(0, 30, (4, 20)))
    assert logits.shape == (4, 20, 30) and h_n.shape == (3, 4, 16)


def test_classifier_reads_the_top_layers_final_state():
    torch.manual_seed(0)
    model = SequenceClassifier(5, 8, 3).eval()
    x = torch.randn(2, 7, 5)
    _, h_n = model.rnn(x)
    torch.testing.assert_close(model(x), model.fc(h_n[-1]))


def test_unidirectional_tagger_is_causal_and_bidirectional_is_not():
    torch.manual_seed(1)
    x = torch.randn(1, 10, 4)
    changed = x.clone()
    changed[:, 7] += 1.0
    uni = SequenceTagger(4, 8, 3).eval()
    bi = SequenceTagger(4, 8, 3, bidirectional=True).eval()
    # Changing step 7 cannot affect a causal tagger's earlier predictions...
    torch.testing.assert_close(uni(x)[:, :7], uni(changed)[:, :7], atol=0, rtol=0)
    # ...but the bidirectional tagger sees the future.
    assert not torch.allclose(bi(x)[:, :7], bi(changed)[:, :7])


@pytest.mark.parametrize("batch_first,batched", [(True, True), (False, True), (True, False)])
def test_one_layer_bidirectional_matches_torch(batch_first, batched):
    torch.manual_seed(2)
    ref = nn.RNN(4, 6, num_layers=1, bidirectional=True, batch_first=batch_first).double()
    mine = BidirectionalRNN(4, 6, num_layers=1, batch_first=batch_first).double()
    with torch.no_grad():
        for stack, suffix in ((mine.forward_rnn, ""), (mine.backward_rnn, "_reverse")):
            cell = stack.cells[0]
            cell.Wxh.weight.copy_(getattr(ref, "weight_ih_l0" + suffix))
            cell.Whh.weight.copy_(getattr(ref, "weight_hh_l0" + suffix))
            cell.Wxh.bias.copy_(getattr(ref, "bias_ih_l0" + suffix))
            cell.Whh.bias.copy_(getattr(ref, "bias_hh_l0" + suffix))
    shape = ((3, 8, 4) if batch_first else (8, 3, 4)) if batched else (8, 4)
    x = torch.randn(shape, dtype=torch.float64)
    h0 = torch.randn((2, 3, 6) if batched else (2, 6), dtype=torch.float64)
    xr, hr = x.clone().requires_grad_(), h0.clone().requires_grad_()
    xm, hm = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out_r, hn_r = ref(xr, hr)
    out_m, hn_m = mine(xm, hm)
    torch.testing.assert_close(out_m, out_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(hn_m, hn_r, atol=1e-10, rtol=0)
    (out_r.sum() + hn_r.pow(2).sum()).backward()
    (out_m.sum() + hn_m.pow(2).sum()).backward()
    torch.testing.assert_close(xm.grad, xr.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(hm.grad, hr.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(mine.backward_rnn.cells[0].Whh.weight.grad, ref.weight_hh_l0_reverse.grad,
                               atol=1e-10, rtol=0)


def test_bidirectional_is_two_rnns_on_the_sequence_and_its_reverse():
    torch.manual_seed(3)
    birnn = BidirectionalRNN(3, 5, num_layers=2).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    out, h_n = birnn(x)
    fwd, h_fwd = birnn.forward_rnn(x)
    bwd, h_bwd = birnn.backward_rnn(x.flip(1))
    torch.testing.assert_close(out, torch.cat([fwd, bwd.flip(1)], dim=-1))
    torch.testing.assert_close(h_n, torch.cat([h_fwd, h_bwd]))


def test_gradcheck_bidirectional_float64():
    torch.manual_seed(4)
    birnn = BidirectionalRNN(3, 4, num_layers=2).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in birnn.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in birnn.parameters()]

    def fn(x, h0, *ws):
        return torch.func.functional_call(birnn, dict(zip(names, ws)), (x, h0))

    assert torch.autograd.gradcheck(fn, (x, h0, *weights))


@pytest.fixture
def char_model():
    torch.manual_seed(5)
    return CharRNN(vocab_size=12, embed_dim=8, hidden_size=16, num_layers=3).eval()


def test_generate_extends_prompt_reproducibly_within_vocabulary(char_model):
    prompt = torch.randint(0, 12, (3, 4))
    out1 = char_model.generate(prompt, 50, temperature=1.5, generator=torch.Generator().manual_seed(0))
    out2 = char_model.generate(prompt, 50, temperature=1.5, generator=torch.Generator().manual_seed(0))
    out3 = char_model.generate(prompt, 50, temperature=1.5, generator=torch.Generator().manual_seed(1))
    assert out1.shape == (3, 54) and out1.dtype == torch.int64
    assert torch.equal(out1[:, :4], prompt)
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    assert out1.min() >= 0 and out1.max() < 12
    assert char_model.generate(prompt, 0).shape == (3, 4)
    top1 = char_model.generate(prompt, 20, top_k=1, generator=torch.Generator().manual_seed(2))
    top1_again = char_model.generate(prompt, 20, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top1, top1_again)  # k = 1 is greedy whatever the seed


def _greedy(model, prompt, n):
    seq = prompt
    for _ in range(n):
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def test_generate_tends_to_greedy_as_temperature_goes_to_zero(char_model):
    prompt = torch.randint(0, 12, (4, 3))
    greedy = _greedy(char_model, prompt, 30)
    cold = char_model.generate(prompt, 30, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    hot = char_model.generate(prompt, 30, temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(hot, greedy)


def test_incremental_decoding_equals_full_forward(char_model):
    torch.manual_seed(6)
    seq = torch.randint(0, 12, (2, 15))
    full_logits, full_h = char_model(seq)
    logits, h = char_model(seq[:, :5])
    steps = [logits]
    for t in range(5, 15):
        logits, h = char_model(seq[:, t:t + 1], h)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, full_h, atol=1e-6, rtol=1e-5)
    # generate() uses the same carried-state decoding: with a one-token vocabulary mass
    # (top_k=1) it must agree with argmax over the full-sequence forward.
    generated = char_model.generate(seq[:, :5], 10, top_k=1)
    assert torch.equal(generated, _greedy(char_model, seq[:, :5], 10))


def test_rnn_accepts_custom_initial_state_and_it_matters():
    torch.manual_seed(7)
    rnn = RNN(3, 4, num_layers=2)
    x = torch.randn(2, 5, 3)
    out_zero, _ = rnn(x)
    out_given, _ = rnn(x, torch.zeros(2, 2, 4))
    torch.testing.assert_close(out_zero, out_given, atol=0, rtol=0)
    assert not torch.allclose(out_zero, rnn(x, torch.ones(2, 2, 4))[0])
