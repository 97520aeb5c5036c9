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

from . import _checks
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

    Inputs: x, h0
        - **x**: (B, T, D) if ``batch_first`` else (T, B, D); or unbatched (T, D).
        - **h0**: (2L, B, H) initial states, the forward stack's L first; or (2L, H)
          unbatched. Default: zeros.

    Outputs: outputs, h_n
        - **outputs**: (B, T, 2H) if ``batch_first`` else (T, B, 2H), or (T, 2H);
          the forward half first.
        - **h_n**: (2L, B, H), or (2L, H): the forward stack's final states, then the
          backward stack's (its state after reading x_1).

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
    ):
        super().__init__()
        self.forward_rnn = RNN(input_size, hidden_size, num_layers, dropout, bias, batch_first)
        self.backward_rnn = RNN(input_size, hidden_size, num_layers, dropout, bias, batch_first)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = bool(batch_first)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        """Inputs: x (B, T, D) / (T, B, D) / (T, D); h0 (2L, B, H) / (2L, H) or None.

        Outputs: outputs (B, T, 2H) / (T, B, 2H) / (T, 2H); h_n (2L, B, H) / (2L, H).
        """
        w = self.forward_rnn.cells[0].Wxh.weight
        _checks.sequence_input(x, self.input_size, self.batch_first, w)
        time_dim = 1 if (x.dim() == 3 and self.batch_first) else 0
        h0_fwd = h0_bwd = None
        if h0 is not None:
            batch = () if x.dim() == 2 else (x.shape[1 - time_dim],)
            _checks.state("h0", h0, (2 * self.num_layers, *batch, self.hidden_size), w)
            h0_fwd, h0_bwd = h0[: self.num_layers], h0[self.num_layers:]  # each (L, B, H)
        fwd_outputs, h_fwd = self.forward_rnn(x, h0_fwd)
        bwd_outputs, h_bwd = self.backward_rnn(x.flip(time_dim), h0_bwd)
        bwd_outputs = bwd_outputs.flip(time_dim)  # back to input order
        outputs = torch.cat([fwd_outputs, bwd_outputs], dim=-1)  # (B, T, 2H)
        return outputs, torch.cat([h_fwd, h_bwd], dim=0)  # (2L, B, H)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
