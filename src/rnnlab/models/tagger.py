"""Many-to-many: one prediction per time step, from a uni- or bidirectional RNN."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .dropout import Dropout
from .bidirectional import BidirectionalRNN
from .rnn import RNN


class SequenceTagger(nn.Module):
    r"""Tags every step of a sequence from the RNN's hidden state at that step.

    .. math::
        \mathrm{logits}_t = W_{fc}\, \mathrm{dropout}(o_t) + b_{fc}

    where :math:`o_t` is the top layer's state h_t (unidirectional: context x_1..x_t) or
    the concatenation of both directions' states (bidirectional: context x_1..x_T).

    Args:
        input_size: input features D.
        hidden_size: hidden units H (per direction).
        num_tags: number of tags K.
        num_layers: stacked layers L (per direction). Default: 2.
        dropout: dropout between RNN layers and before the head, in [0, 1). Default: 0.2.
        bidirectional: use :class:`BidirectionalRNN` instead of :class:`RNN`. Default: ``False``.
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"`` or ``"lstm"``. Default: ``"rnn_tanh"``.

    Inputs: x, lengths
        - **x**: (B, T, D), padded past each sequence's length.
        - **lengths**: (B,) int64 valid steps per sequence, or None (all T). Logits at
          padded steps are computed from zero states; the task's loss ignores them.

    Outputs: logits
        - **logits**: (B, T, K).
    """

    def __init__(self, input_size: int, hidden_size: int, num_tags: int,
                 num_layers: int = 2, dropout: float = 0.2, bidirectional: bool = False,
                 cell: str = "rnn_tanh"):
        super().__init__()
        self.num_tags = checks.positive_int("num_tags", num_tags)
        dropout = checks.dropout_prob("dropout", dropout)
        between_layers = dropout if num_layers != 1 else 0.0  # one layer: only the head's dropout
        rnn_cls = BidirectionalRNN if bidirectional else RNN
        self.rnn = rnn_cls(input_size, hidden_size, num_layers, dropout=between_layers, cell=cell)
        self.head_dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_tags)
        self.bidirectional = bool(bidirectional)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs: x (B, T, D); lengths (B,) or None. Outputs: logits (B, T, K)."""
        outputs, _ = self.rnn(x, lengths=lengths)  # (B, T, H) or (B, T, 2H)
        return self.fc(self.head_dropout(outputs))  # (B, T, K)
