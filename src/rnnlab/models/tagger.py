"""Many-to-many: one prediction per time step, from a uni- or bidirectional RNN."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .dropout import Dropout
from .regularisers import LockedDropout
from .bidirectional import BidirectionalRNN
from .rnn import RNN


class SequenceTagger(nn.Module):
    r"""Tags every step of a sequence from the RNN's hidden state at that step.

    .. math::
        \mathrm{logits}_t = W_{fc}\, \mathrm{dropout}(o_t) + b_{fc}

    where :math:`o_t` is the top layer's state h_t (unidirectional: context x_1..x_t) or
    the concatenation of both directions' states (bidirectional: context x_1..x_T). With
    ``vocab_size`` the inputs are token ids and :math:`x_t = E[\mathrm{id}_t]`, a learnt
    embedding (id 0 is padding, its embedding stays zero), as in the taggers of the seed
    article's part-of-speech and named-entity examples.

    Args:
        input_size: input features D, for feature inputs; None with ``vocab_size``.
        hidden_size: hidden units H (per direction).
        num_tags: number of tags K.
        num_layers: stacked layers L (per direction). Default: 2.
        dropout: dropout between RNN layers and before the head, in [0, 1). Default: 0.2.
        bidirectional: use :class:`BidirectionalRNN` instead of :class:`RNN`. Default: ``False``.
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"``, ``"lstm"``, ``"min_gru"``, ``"min_lstm"``,
            ``"indrnn"`` or ``"ln_lstm"`` (:class:`RNN`). Default: ``"rnn_tanh"``.
        cell_options: further arguments of the cells (:class:`RNN`). Default: none.
        locked_dropout, weight_drop, zoneout: the regularisers of :class:`RNN`; with
            ``locked_dropout`` the head's dropout is locked over time too. Defaults: off.
        vocab_size: token vocabulary size V, for token-id inputs; None for feature inputs.
        embed_dim: the token embedding's size D (the RNN's input size), with ``vocab_size``.
            Default: 100.

    Inputs: x, lengths
        - **x**: (B, T, D) float features, or (B, T) int64 token ids in [0, V) with
          ``vocab_size``; padded past each sequence's length.
        - **lengths**: (B,) int64 valid steps per sequence, or None (all T). Logits at
          padded steps are computed from zero states; the task's loss ignores them.

    Outputs: logits
        - **logits**: (B, T, K).
    """

    def __init__(self, input_size: int | None, hidden_size: int, num_tags: int,
                 num_layers: int = 2, dropout: float = 0.2, bidirectional: bool = False,
                 cell: str = "rnn_tanh", vocab_size: int | None = None, embed_dim: int = 100,
                 cell_options: dict | None = None, locked_dropout: bool = False, weight_drop: float = 0.0,
                 zoneout: float = 0.0):
        super().__init__()
        self.num_tags = checks.positive_int("num_tags", num_tags)
        dropout = checks.dropout_prob("dropout", dropout)
        if (input_size is None) == (vocab_size is None):
            raise checks.ArgumentError("input_size", "expected input_size (features per step) or vocab_size (token "
                                                     f"ids), exactly one of them; got input_size={input_size!r}, "
                                                     f"vocab_size={vocab_size!r}")
        self.embedding = None
        if vocab_size is not None:
            self.vocab_size = checks.positive_int("vocab_size", vocab_size)
            self.embedding = nn.Embedding(vocab_size, checks.positive_int("embed_dim", embed_dim), padding_idx=0)
            input_size = embed_dim
        between_layers = dropout if num_layers != 1 else 0.0  # one layer: only the head's dropout
        rnn_cls = BidirectionalRNN if bidirectional else RNN
        self.rnn = rnn_cls(input_size, hidden_size, num_layers, dropout=between_layers, cell=cell,
                            cell_options=cell_options, locked_dropout=locked_dropout, weight_drop=weight_drop,
                            zoneout=zoneout)
        self.head_dropout = LockedDropout(dropout) if locked_dropout else Dropout(dropout)  # on (B, T, ·)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_tags)
        self.bidirectional = bool(bidirectional)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs: x (B, T, D), or ids (B, T) with ``vocab_size``; lengths (B,) or None.
        Outputs: logits (B, T, K)."""
        if self.embedding is not None:
            checks.token_ids("x", x, self.vocab_size)
            x = self.embedding(x)  # (B, T, D)
        outputs, _ = self.rnn(x, lengths=lengths)  # (B, T, H) or (B, T, 2H)
        return self.fc(self.head_dropout(outputs))  # (B, T, K)
