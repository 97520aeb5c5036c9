"""Bidirectional RNN: two independent stacks reading the sequence in opposite directions.

As in the seed article, the backward stack is a plain :class:`RNN` fed the time-flipped
input; its outputs are flipped back so that position t of both halves refers to the
same input step. With one layer this is exactly ``torch.nn.RNN(bidirectional=True)``;
with more layers it differs from PyTorch on purpose: each direction keeps its own
stack, instead of feeding both directions' concatenated outputs into every next layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .rnn import RNN


class BidirectionalRNN(nn.Module):
    r"""Two :class:`RNN` stacks, one over the sequence and one over its reverse.

    .. math::
        \overrightarrow{o}_{1..T} = \mathrm{RNN}_{fwd}(x_{1..T}), \quad
        \overleftarrow{o}_{1..T} = \mathrm{flip}(\mathrm{RNN}_{bwd}(\mathrm{flip}(x_{1..T}))), \quad
        o_t = [\overrightarrow{o}_t ; \overleftarrow{o}_t]

    Args:
        input_size: number of input features D.
        hidden_size: hidden units H per direction.
        num_layers: layers L in each direction's stack. Default: 1.
        dropout: dropout between the layers of each stack, in [0, 1). Default: 0.0.
        bias: if ``False`` the cells have no biases. Default: ``True``.
        batch_first: if ``True`` inputs and outputs are (B, T, ·), else (T, B, ·). Default: ``True``.
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"``, ``"lstm"``, ``"min_gru"``, ``"min_lstm"``,
            ``"indrnn"`` or ``"ln_lstm"`` (:class:`RNN`). Default: ``"rnn_tanh"``.
        cell_options: further arguments of the cells (:class:`RNN`). Default: none.
        locked_dropout, weight_drop, zoneout: the regularisers of :class:`RNN`, in both stacks. Defaults: off.

    Inputs: x, h0, lengths
        - **x**: (B, T, D) if ``batch_first`` else (T, B, D); or unbatched (T, D).
        - **h0**: (2L, B, H) initial states, the forward stack's L first; or (2L, H)
          unbatched; a tuple (h0, c0) of such tensors for the LSTM. Default: zeros.
        - **lengths**: (B,) int64 valid steps per sequence of a padded batch, or None.
          The backward stack then starts at each sequence's own last valid step, not at
          the padding: each sequence is reversed within its length.

    Outputs: outputs, h_n
        - **outputs**: (B, T, 2H) if ``batch_first`` else (T, B, 2H), or (T, 2H);
          the forward half first.
        - **h_n**: (2L, B, H), or (2L, H): the forward stack's final states, then the
          backward stack's (its state after reading x_1); (h_n, c_n) for the LSTM.

    Attributes:
        forward_rnn, backward_rnn: the two :class:`RNN` stacks.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        cell: str = "rnn_tanh",
        cell_options: dict | None = None,
        locked_dropout: bool = False,
        weight_drop: float = 0.0,
        zoneout: float = 0.0,
    ):
        super().__init__()
        regularisers = {"locked_dropout": locked_dropout, "weight_drop": weight_drop, "zoneout": zoneout}
        self.forward_rnn = RNN(input_size, hidden_size, num_layers, dropout, bias, batch_first, cell, cell_options,
                               **regularisers)
        self.backward_rnn = RNN(input_size, hidden_size, num_layers, dropout, bias, batch_first, cell, cell_options,
                                **regularisers)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.cell = bool(batch_first), cell

    def forward(self, x: torch.Tensor, h0=None, lengths: torch.Tensor | None = None):
        """Inputs: x (B, T, D) / (T, B, D) / (T, D); h0 (2L, B, H) / (2L, H) [or (h0, c0)] or None;
        lengths (B,) or None.

        Outputs: outputs (B, T, 2H) / (T, B, 2H) / (T, 2H); h_n (2L, B, H) / (2L, H) [or (h_n, c_n)].
        """
        w = self.forward_rnn.cells[0].Wxh.weight
        checks.sequence_input(x, self.input_size, self.batch_first, w)
        time_dim = 1 if (x.dim() == 3 and self.batch_first) else 0
        L = self.num_layers
        h0_fwd = h0_bwd = None
        if h0 is not None:
            batch = () if x.dim() == 2 else (x.shape[1 - time_dim],)
            state = self.forward_rnn.check_state("h0", h0, (2 * L, *batch, self.hidden_size))
            h0_fwd = self.forward_rnn.public_state(tuple(s[:L] for s in state))  # (L, B, H) each
            h0_bwd = self.forward_rnn.public_state(tuple(s[L:] for s in state))
        fwd_outputs, h_fwd = self.forward_rnn(x, h0_fwd, lengths)
        bwd_outputs, h_bwd = self.backward_rnn(_reverse(x, lengths, time_dim), h0_bwd, lengths)
        bwd_outputs = _reverse(bwd_outputs, lengths, time_dim)  # back to input order
        outputs = torch.cat([fwd_outputs, bwd_outputs], dim=-1)  # (B, T, 2H)
        if isinstance(h_fwd, tuple):
            return outputs, tuple(torch.cat(pair, dim=0) for pair in zip(h_fwd, h_bwd))  # (2L, B, H) each
        return outputs, torch.cat([h_fwd, h_bwd], dim=0)  # (2L, B, H)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        return s + (f", cell={self.cell!r}" if self.cell != "rnn_tanh" else "")


def _reverse(x: torch.Tensor, lengths: torch.Tensor | None, time_dim: int) -> torch.Tensor:
    """Reverse each sequence along time within its own length; padding stays where it is.

    Inputs: x (B, T, ·) if time_dim == 1 else (T, B, ·); lengths (B,) or None.
    """
    if lengths is None:
        return x.flip(time_dim)
    T = x.shape[time_dim]
    t = torch.arange(T, device=x.device)[:, None]  # (T, 1)
    lengths = lengths.to(x.device)[None, :]  # (1, B)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B): step t reads step index[t]
    if time_dim == 1:
        index = index.t()  # (B, T)
    return x.gather(time_dim, index.unsqueeze(-1).expand_as(x))
