"""Character-level language model: embedding, stacked RNN, projection to the vocabulary,
and temperature / top-k sampling that carries the hidden state from token to token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from .dropout import Dropout
from .regularisers import LockedDropout, embedding_dropout
from .rnn import RNN


class CharRNN(nn.Module):
    r"""Predicts the next character at every position of a sequence of character ids.

    .. math::
        e_t = E[x_t], \quad o_t, h = \mathrm{RNN}(e_{1..t}), \quad
        \mathrm{logits}_t = W_{out}\, \mathrm{dropout}(o_t) + b_{out}

    Args:
        vocab_size: number of distinct characters V.
        embed_dim: embedding size D (the RNN's input size).
        hidden_size: hidden units H.
        num_layers: stacked layers L. Default: 3.
        dropout: dropout between RNN layers and before the output projection, in [0, 1).
            Default: 0.2.
        cell: ``"rnn_tanh"``, ``"rnn_relu"``, ``"gru"``, ``"lstm"``, ``"min_gru"``, ``"min_lstm"``,
            ``"indrnn"`` or ``"ln_lstm"`` (:class:`RNN`). Default: ``"rnn_tanh"``.
        cell_options: further arguments of the cells (:class:`RNN`). Default: none.
        locked_dropout, weight_drop, zoneout: the regularisers of :class:`RNN`; with
            ``locked_dropout`` the input and output dropout is locked over time too. Defaults: off.
        embedding_dropout: probability of dropping a whole character's embedding (every
            occurrence in the batch) in training, AWD-LSTM's ``dropoute``. Default: 0.0.
        input_dropout: dropout on the embeddings fed to the RNN, in [0, 1). Default: 0.0.
        tie_weights: share one (V, D) tensor between the embedding and the output
            projection (Press & Wolf, 2017; Inan et al., 2017); needs ``embed_dim ==
            hidden_size``. Default: ``False``.

    Inputs: idx, h0
        - **idx**: (B, T) int64 character ids in [0, V).
        - **h0**: (L, B, H) initial state, e.g. the ``h_n`` of the previous chunk; a tuple
          (h0, c0) for the LSTM. Default: zeros.

    Outputs: logits, h_n
        - **logits**: (B, T, V) unnormalised next-character scores.
        - **h_n**: (L, B, H) state after the last step; (h_n, c_n) for the LSTM.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int,
                 num_layers: int = 3, dropout: float = 0.2, cell: str = "rnn_tanh",
                 cell_options: dict | None = None, locked_dropout: bool = False, weight_drop: float = 0.0,
                 zoneout: float = 0.0, embedding_dropout: float = 0.0, input_dropout: float = 0.0,
                 tie_weights: bool = False):
        super().__init__()
        self.vocab_size = checks.positive_int("vocab_size", vocab_size)
        self.embedding = nn.Embedding(vocab_size, checks.positive_int("embed_dim", embed_dim))
        dropout = checks.dropout_prob("dropout", dropout)
        self.embedding_dropout = checks.dropout_prob("embedding_dropout", embedding_dropout)
        between_layers = dropout if num_layers != 1 else 0.0  # one layer: only the output's dropout
        self.rnn = RNN(embed_dim, hidden_size, num_layers, dropout=between_layers, cell=cell,
                       cell_options=cell_options, locked_dropout=locked_dropout, weight_drop=weight_drop,
                       zoneout=zoneout)
        drop = LockedDropout if locked_dropout else Dropout  # on (B, T, ·): locked, one mask per sequence
        self.input_dropout = drop(checks.dropout_prob("input_dropout", input_dropout))
        self.output_dropout = drop(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)
        self.tie_weights = bool(tie_weights)
        if self.tie_weights:
            if embed_dim != hidden_size:
                raise ValueError(f"tie_weights: expected embed_dim == hidden_size (one (V, D) tensor for the embedding "
                                 f"and the output projection), got embed_dim={embed_dim}, hidden_size={hidden_size}")
            self.fc.weight = self.embedding.weight  # one Parameter, two uses

    def forward(self, idx: torch.Tensor, h0: torch.Tensor | None = None):
        """Inputs: idx (B, T) int64; h0 (L, B, H) or None. Outputs: logits (B, T, V); h_n (L, B, H)."""
        checks.token_ids("idx", idx, self.vocab_size)
        return self._logits(idx, h0)

    def _logits(self, idx: torch.Tensor, h: torch.Tensor | None):
        embedded = embedding_dropout(self.embedding, idx, self.embedding_dropout, self.training)  # (B, T, D)
        outputs, h_n = self.rnn(self.input_dropout(embedded), h)  # (B, T, H), (L, B, H)
        return self.fc(self.output_dropout(outputs)), h_n  # (B, T, V)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` characters after ``prompt``.

        The prompt runs through the network once; after that each new token is fed
        alone with the carried hidden state, so generating N tokens costs N steps, not
        O(N^2). Call ``model.eval()`` first unless you want dropout while sampling.

        Args:
            prompt: (B, T0) int64 ids, T0 >= 1.
            max_new_tokens: number of tokens to append, >= 0.
            temperature: > 0; logits are divided by it. Below 1 sharpens the distribution
                toward greedy decoding, above 1 flattens it.
            top_k: if given, sample only among the k most likely tokens, 1 <= k <= V.
            generator: a ``torch.Generator`` for reproducible sampling.

        Returns:
            (B, T0 + max_new_tokens) int64: the prompt followed by the sampled ids.
        """
        checks.token_ids("prompt", prompt, self.vocab_size)
        checks.int_at_least("max_new_tokens", max_new_tokens, 0)
        if not checks.is_number(temperature) or not temperature > 0:
            raise ValueError(f"expected temperature > 0, got {temperature!r}")
        if top_k is not None and (not checks.is_int(top_k) or not 1 <= top_k <= self.vocab_size):
            raise ValueError(f"expected top_k in [1, {self.vocab_size}] (the vocabulary size) or None, got {top_k!r}")

        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                raise ValueError(f"expected finite weights for generation, got NaN or inf in {name} "
                                 "(the model's weights have diverged; check training)")

        tokens = [prompt.long()]
        logits, state = self._logits(prompt, None)  # (B, T0, V), (L, B, H) [or (h, c)]
        parts = state if isinstance(state, tuple) else (state,)
        layers = [tuple(s[layer] for s in parts) for layer in range(self.rnn.num_layers)]  # (h,) or (h, c) each
        step = self.decoder()
        last = logits[:, -1]  # (B, V)
        for i in range(max_new_tokens):
            next_token = sample(last, temperature, top_k, generator)  # (B, 1)
            tokens.append(next_token)
            if i + 1 < max_new_tokens:
                last, layers = step(next_token.squeeze(1), layers)  # (B, V)
        return torch.cat(tokens, dim=1)  # (B, T0 + max_new_tokens)

    def decoder(self):
        """The one-token step of :meth:`generate`: :meth:`forward` on a (B, 1) input, as one
        step of the RNN's own loop (:meth:`RNN.step_layers`), with every cost that does not
        depend on the token paid once here: the embedding folded into layer 0's input
        projection (one (V, D) x (D, G*H) product, then a row lookup per token), the other
        layers' summed biases, and the checks.

        Returns step(token (B,), layers) -> (logits (B, V), layers), where layers holds each
        layer's state as a tuple, (h,) or (h, c), of (B, H) tensors.
        """
        cells = self.rnn.cells
        table = cells[0].project(self.embedding.weight)  # (V, G*H): W_xh E[v] + biases for every v
        projections = [table.__getitem__] + [layer_cell.step_projection() for layer_cell in cells[1:]]  # (B, ·) -> (B, G*H)
        recurrences = [layer_cell.step_recurrence() for layer_cell in cells]
        # Bound once: at batch 1 each attribute lookup on a module is a visible share of a step.
        step_layers, head, output_dropout = self.rnn.step_layers, self.fc, self.output_dropout
        head_weight, head_bias = head.weight, head.bias

        def step(token: torch.Tensor, layers: list):
            layers = step_layers(token, layers, projections, recurrences=recurrences)
            h = output_dropout(layers[-1][0]) if self.training else layers[-1][0]  # (B, H)
            return F.linear(h, head_weight, head_bias), layers  # (B, V)

        return step


def sample(logits: torch.Tensor, temperature: float, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)``, among the ``top_k``
    most likely if given. Inputs: logits (B, V). Outputs: sampled ids (B, 1)."""
    # Subtract the row maximum before dividing: a tiny temperature then pushes the
    # other logits to -inf (probability 0) instead of overflowing to +inf.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    try:
        return torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    except RuntimeError as err:  # NaN or inf in the logits: the products overflowed
        if torch.isfinite(probs).all():
            raise
        raise ValueError("expected finite logits while generating, got NaN or inf "
                         "(the model's weights are too large; check training)") from err