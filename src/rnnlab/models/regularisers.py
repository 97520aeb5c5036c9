"""The regularisers that made LSTM language models strong, for every cell and architecture:

* :class:`LockedDropout`, variational dropout (Gal & Ghahramani, 2016, "A Theoretically
  Grounded Application of Dropout in Recurrent Neural Networks"): one mask per sequence,
  the same at every time step.
* :class:`WeightDrop`, DropConnect on the recurrent weights, one mask per forward pass
  (Merity et al., 2017, "Regularizing and Optimizing LSTM Language Models", AWD-LSTM).
  It is a ``torch.nn.utils.parametrize`` parametrization of W_hh, so the dropped weight is
  an ordinary weight to every recurrence, the compiled ones included.
* :func:`zoneout`, (Krueger et al., 2016, "Zoneout: Regularizing RNNs by Randomly
  Preserving Hidden Activations"): each unit keeps its previous value with probability p.
* :func:`embedding_dropout`, whole rows of an embedding dropped (Gal & Ghahramani, 2016;
  AWD-LSTM's ``dropoute``): a dropped token is all zeros wherever it occurs in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by all its time steps (variational dropout).

    In training each feature of each sequence is zeroed with probability p at every step
    (the others scaled by 1 / (1 - p)); in eval mode, or with p = 0, the identity.

    Args:
        p: probability of zeroing a feature, in [0, 1).
        time_dim: the input's time dimension (1 for (B, T, D), 0 for (T, B, D)).

    Inputs: x (B, T, D) or (T, B, D) as ``time_dim`` says, or (B, D) (one step: plain
    dropout). Outputs: same shape.
    """

    def __init__(self, p: float = 0.5, time_dim: int = 1):
        super().__init__()
        self.p = checks.dropout_prob("p", p)
        self.time_dim = time_dim

    def forward(self, x: torch.Tensor, time_dim: int | None = None) -> torch.Tensor:
        """Inputs: x (B, T, D) / (T, B, D), or (B, D). Outputs: the same shape."""
        if not self.training or self.p == 0:
            return x
        shape = list(x.shape)
        if x.dim() == 3:
            shape[self.time_dim if time_dim is None else time_dim] = 1  # (B, 1, D) or (1, B, D)
        keep = torch.rand(shape, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, locked over time"


class WeightDrop(nn.Module):
    """A parametrization: the weight with each entry zeroed with probability p in training
    (the others scaled by 1 / (1 - p)), unchanged in eval mode. One mask per evaluation of
    the weight: :class:`rnnlab.models.RNN` evaluates it once per forward pass
    (``torch.nn.utils.parametrize.cached``), so every time step sees the same dropped W_hh.

    Inputs: weight (any shape). Outputs: the same shape.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = checks.dropout_prob("weight_drop", p)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.dropout(weight, self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def zoneout(previous: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...], p: float,
            training: bool) -> tuple[torch.Tensor, ...]:
    """Mix a step's new state with the previous one, unit by unit.

    In training each unit of each state tensor (h, and c for the LSTMs) keeps its previous
    value with probability p (a fresh mask per step and tensor); in evaluation every unit
    takes the expectation p * previous + (1 - p) * new (Krueger et al., 2016).

    Inputs: previous, new: tuples of (B, H) tensors. Outputs: the mixed tuple.
    """
    if training:
        return tuple(torch.where(torch.rand_like(n) < p, o, n) for o, n in zip(previous, new))
    return tuple(torch.lerp(n, o, p) for o, n in zip(previous, new))  # n + p (o - n)


def embedding_dropout(embedding: nn.Embedding, idx: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``embedding(idx)`` with whole rows of the table dropped in training: each token of the
    vocabulary is zeroed with probability p for the whole batch (the others scaled by
    1 / (1 - p)), one mask per call.

    Inputs: idx (B, T) int64. Outputs: (B, T, D).
    """
    if not training or p == 0:
        return embedding(idx)
    weight = embedding.weight
    keep = (torch.rand(weight.shape[0], 1, device=weight.device) >= p).to(weight.dtype)  # (V, 1)
    return F.embedding(idx, weight * keep / (1.0 - p), embedding.padding_idx)
