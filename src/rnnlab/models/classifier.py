"""Many-to-one: read a whole sequence, classify it from the final hidden state."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .dropout import Dropout
from .rnn import RNN


class SequenceClassifier(nn.Module):
    r"""An :class:`RNN` whose top layer's final state is projected to class logits.

    .. math::
        \mathrm{logits} = W_{fc}\, \mathrm{dropout}(h^{(L)}_T) + b_{fc}

    The final state (each sequence's own last valid step) is a compressed summary of the
    whole input. With
    ``SequenceClassifier(10, 64, 2)`` (the seed task) the model has 13,314 parameters.

    Args:
        input_size: input features D.
        hidden_size: hidden units H.
        num_classes: number of classes C.
        num_layers: stacked layers L. Default: 2.
        dropout: dropout between RNN layers and before the classifier head, in [0, 1).
            Default: 0.2.
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"``, ``"lstm"``, ``"min_gru"``, ``"min_lstm"``,
            ``"indrnn"`` or ``"ln_lstm"`` (:class:`RNN`). Default: ``"rnn_tanh"``.
        cell_options: further arguments of the cells (:class:`RNN`). Default: none.
        locked_dropout, weight_drop, zoneout: the regularisers of :class:`RNN` (the head's
            dropout acts on one vector per sequence, so it is the same either way). Defaults: off.

    Inputs: x, lengths
        - **x**: (B, T, D), padded past each sequence's length.
        - **lengths**: (B,) int64 valid steps per sequence, or None (all T).

    Outputs: logits
        - **logits**: (B, C).
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int,
                 num_layers: int = 2, dropout: float = 0.2, cell: str = "rnn_tanh",
                 cell_options: dict | None = None, locked_dropout: bool = False, weight_drop: float = 0.0,
                 zoneout: float = 0.0):
        super().__init__()
        self.num_classes = checks.positive_int("num_classes", num_classes)
        dropout = checks.dropout_prob("dropout", dropout)
        between_layers = dropout if num_layers != 1 else 0.0  # one layer: only the head's dropout
        self.rnn = RNN(input_size, hidden_size, num_layers, dropout=between_layers, cell=cell,
                       cell_options=cell_options, locked_dropout=locked_dropout, weight_drop=weight_drop,
                       zoneout=zoneout)
        self.fc = nn.Linear(hidden_size, num_classes)
        self.head_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs: x (B, T, D); lengths (B,) or None. Outputs: logits (B, C)."""
        _, h_n = self.rnn(x, lengths=lengths)  # (L, B, H), or (h_n, c_n) for the LSTM
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n
        return self.fc(self.head_dropout(h_n[-1]))  # (B, C)
