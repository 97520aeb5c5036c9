"""Many-to-one: read a whole sequence, classify it from the final hidden state."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks
from .rnn import RNN


class SequenceClassifier(nn.Module):
    r"""An :class:`RNN` whose top layer's final state is projected to class logits.

    .. math::
        \mathrm{logits} = W_{fc}\, \mathrm{dropout}(h^{(L)}_T) + b_{fc}

    The final state is a compressed summary of the whole input. With
    ``SequenceClassifier(10, 64, 2)`` (the seed task) the model has 13,314 parameters.

    Args:
        input_size: input features D.
        hidden_size: hidden units H.
        num_classes: number of classes C.
        num_layers: stacked layers L. Default: 2.
        dropout: dropout between RNN layers and before the classifier head, in [0, 1).
            Default: 0.2.

    Inputs: x
        - **x**: (B, T, D).

    Outputs: logits
        - **logits**: (B, C).
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int,
                 num_layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.rnn = RNN(input_size, hidden_size, num_layers, dropout=dropout)
        self.fc = nn.Linear(hidden_size, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, T, D). Outputs: logits (B, C)."""
        _, h_n = self.rnn(x)  # h_n: (L, B, H)
        return self.fc(self.dropout(h_n[-1]))  # (B, C)
