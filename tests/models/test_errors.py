"""Bad input raises ValueError/TypeError stating what was expected and what was received."""

import re

import pytest
import torch

from rnnlab.models import RNN, BidirectionalRNN, CharRNN, RNNCell, SequenceClassifier, SequenceTagger


def raises(exc, *fragments):
    """pytest.raises that checks every fragment appears (literally) in the message."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


@pytest.fixture
def rnn():
    return RNN(10, 8, num_layers=2)


def test_wrong_rank(rnn):
    with raises(ValueError, "3-D input (B, T, D)", "2-D input (T, D)", "got 4-D input of shape (2, 3, 4, 10)"):
        rnn(torch.randn(2, 3, 4, 10))
    with raises(ValueError, "got 1-D input of shape (10)"):
        rnn(torch.randn(10))


def test_wrong_feature_size(rnn):
    with raises(ValueError, "expected input of shape (B, T, 10), got (32, 20, 12)"):
        rnn(torch.randn(32, 20, 12))
    with raises(ValueError, "expected input of shape (T, B, 10), got (20, 32, 12)"):
        RNN(10, 8, batch_first=False)(torch.randn(20, 32, 12))
    with raises(ValueError, "expected input of shape (T, 10), got (20, 3)"):
        rnn(torch.randn(20, 3))


def test_empty_sequence_and_empty_batch(rnn):
    with raises(ValueError, "at least one time step", "T=0", "(4, 0, 10)"):
        rnn(torch.randn(4, 0, 10))
    with raises(ValueError, "at least one sequence", "B=0", "(0, 5, 10)"):
        rnn(torch.randn(0, 5, 10))


def test_input_dtype_and_type(rnn):
    with raises(TypeError, "dtype torch.float32", "got torch.float64"):
        rnn(torch.randn(2, 3, 10, dtype=torch.float64))
    with raises(TypeError, "dtype torch.float32", "got torch.int64"):
        rnn(torch.zeros(2, 3, 10, dtype=torch.long))
    with raises(TypeError, "torch.Tensor", "got list"):
        rnn([[0.0] * 10])


def test_h0_shape_dtype_device(rnn):
    x = torch.randn(4, 5, 10)
    with raises(ValueError, "expected h0 of shape (2, 4, 8), got (1, 4, 8)"):
        rnn(x, torch.zeros(1, 4, 8))
    with raises(ValueError, "expected h0 of shape (2, 8), got (2, 4, 8)"):
        rnn(torch.randn(5, 10), torch.zeros(2, 4, 8))
    with raises(TypeError, "expected h0 of dtype torch.float32", "got torch.float64"):
        rnn(x, torch.zeros(2, 4, 8, dtype=torch.float64))
    with raises(ValueError, "expected h0 on device cpu", "got meta"):
        rnn(x, torch.zeros(2, 4, 8, device="meta"))
    with raises(ValueError, "expected h0 of shape (4, 4, 8), got (2, 4, 8)"):
        BidirectionalRNN(10, 8, num_layers=2)(x, torch.zeros(2, 4, 8))
    with raises(ValueError, "expected h of shape (2, 4, 8), got (2, 3, 8)"):
        rnn.step(torch.randn(4, 10), torch.zeros(2, 3, 8))


@pytest.mark.parametrize("name,kwargs", [
    ("input_size", dict(input_size=0, hidden_size=4)),
    ("hidden_size", dict(input_size=3, hidden_size=-2)),
    ("num_layers", dict(input_size=3, hidden_size=4, num_layers=0)),
])
def test_sizes_below_one(name, kwargs):
    value = kwargs[name]
    with raises(ValueError, f"expected {name} >= 1, got {value}"):
        RNN(**kwargs)
    with raises(ValueError, f"expected {name} >= 1, got {value}"):
        BidirectionalRNN(**kwargs)


def test_sizes_of_wrong_type():
    with raises(TypeError, "expected hidden_size to be an int >= 1, got 64.0"):
        RNN(10, 64.0)
    with raises(ValueError, "expected input_size >= 1, got 0"):
        RNNCell(0, 4)
    with raises(ValueError, "expected num_classes >= 1, got 0"):
        SequenceClassifier(10, 64, 0)
    with raises(ValueError, "expected num_tags >= 1, got 0"):
        SequenceTagger(10, 64, 0)
    with raises(ValueError, "expected vocab_size >= 1, got 0"):
        CharRNN(0, 8, 16)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval(p):
    with raises(ValueError, f"expected dropout in [0, 1), got {p}"):
        RNN(3, 4, num_layers=2, dropout=p)
    with raises(ValueError, f"expected dropout in [0, 1), got {p}"):
        SequenceClassifier(3, 4, 2, dropout=p)


@pytest.fixture
def char_model():
    return CharRNN(vocab_size=7, embed_dim=4, hidden_size=8, num_layers=2).eval()


def test_char_rnn_ids(char_model):
    with raises(TypeError, "integer dtype", "got torch.float32"):
        char_model(torch.zeros(2, 3))
    with raises(ValueError, "ids in [0, 7)", "got id 7"):
        char_model(torch.tensor([[0, 7, 1]]))
    with raises(ValueError, "ids in [0, 7)", "got id -1"):
        char_model(torch.tensor([[0, -1, 1]]))
    with raises(ValueError, "expected idx of shape (B, T), got (3)"):
        char_model(torch.tensor([0, 1, 2]))
    with raises(ValueError, "non-empty idx", "(2, 0)"):
        char_model(torch.zeros(2, 0, dtype=torch.long))


def test_generate_arguments(char_model):
    prompt = torch.zeros(1, 2, dtype=torch.long)
    for t in (0, -1.0):
        with raises(ValueError, f"expected temperature > 0, got {t}"):
            char_model.generate(prompt, 5, temperature=t)
    with raises(ValueError, "top_k in [1, 7]", "got 0"):
        char_model.generate(prompt, 5, top_k=0)
    with raises(ValueError, "top_k in [1, 7]", "got 8"):
        char_model.generate(prompt, 5, top_k=8)
    with raises(ValueError, "max_new_tokens to be an int >= 0, got -1"):
        char_model.generate(prompt, -1)
    with raises(ValueError, "prompt ids in [0, 7)", "got id 9"):
        char_model.generate(torch.tensor([[9]]), 5)


def test_generate_with_diverged_weights(char_model):
    with torch.no_grad():
        char_model.fc.weight.fill_(float("nan"))
    with raises(ValueError, "expected finite weights for generation", "NaN or inf in fc.weight"):
        char_model.generate(torch.zeros(1, 2, dtype=torch.long), 5)


def test_generate_with_overflowing_logits(char_model):
    with torch.no_grad():  # finite weights whose products overflow float32
        char_model.fc.weight.fill_(3e38)
    with raises(ValueError, "expected finite logits while generating", "NaN or inf"):
        char_model.generate(torch.zeros(1, 2, dtype=torch.long), 5)
