r"""A tagging task that needs both past and future context.

Each sequence is T symbols s_1..s_T drawn uniformly from K symbols and fed one-hot
(D = K). The tag at step t names the pair (previous symbol, next symbol):

    tag_t = K * s_{t-1} + s_{t+1}        (K^2 tags; s_0 and s_{T+1} read as symbol 0)

A bidirectional tagger can be exact: its forward half remembers s_{t-1}, its backward
half s_{t+1}, and a linear head separates every pair (logit u_a + v_b peaks at the true
pair). A unidirectional tagger cannot: at step t it has seen s_1..s_t, and s_{t+1} is
uniform and independent of them, so for t < T no predictor is right more often than
1/K. Its expected token accuracy is at most 1/K + (1 - 1/K)/T (0.2875 for K=4, T=20),
while chance over K^2 tags is 1/K^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checks
from .batching import GeneratedSplitsDataModule, check_min_len


PAD_TAG = -100  # tag of padded steps, ignored by losses and metrics (torch's default ignore_index)


def make_neighbour_pair_data(n: int, seq_len: int, num_symbols: int, generator: torch.Generator,
                             lengths: torch.Tensor | None = None):
    """Return x (n, T, K) one-hot float32 and tags (n, T) int64 in [0, K^2).

    With ``lengths`` (n,), each sequence ends after lengths[i] steps (its last tag reads
    symbol 0 as the next one), x is zero and the tags are PAD_TAG after that, and
    (x, tags, lengths) is returned.
    """
    s = torch.randint(0, num_symbols, (n, seq_len), generator=generator)  # (N, T)
    valid = None if lengths is None else torch.arange(seq_len)[None, :] < lengths[:, None]  # (N, T)
    if valid is not None:
        s = s * valid  # symbol 0 after the end, as after the end of a full-length sequence
    padded = F.pad(s, (1, 1))  # (N, T + 2): symbol 0 before the start and after the end
    tags = num_symbols * padded[:, :-2] + padded[:, 2:]  # (N, T)
    x = F.one_hot(s, num_symbols).float()  # (N, T, K)
    if valid is None:
        return x, tags
    return x * valid.unsqueeze(-1), tags.masked_fill(~valid, PAD_TAG), lengths


class TaggingDataModule(GeneratedSplitsDataModule):
    """Train/val/test splits of the neighbour-pair tagging task (see module docstring).

    Args:
        num_train, num_val, num_test: sequences per split.
        seq_len: time steps T.
        num_symbols: alphabet size K; the input size is K and there are K^2 tags.
        batch_size: sequences per batch.
        seed: generator seed (one stream per split).
        num_workers: DataLoader worker processes.
        min_len: if set, sequence lengths are uniform in [min_len, seq_len] and batches are
            (x, tags, lengths), tags PAD_TAG past each length.
    """

    def __init__(self, num_train: int = 8000, num_val: int = 1000, num_test: int = 1000,
                 seq_len: int = 20, num_symbols: int = 4, batch_size: int = 64,
                 seed: int = 0, num_workers: int = 0, min_len: int | None = None):
        super().__init__()
        for name in ("num_train", "num_val", "num_test", "seq_len", "batch_size"):
            checks.positive_int(name, locals()[name])
        check_min_len(min_len, seq_len)
        if checks.positive_int("num_symbols", num_symbols) < 2:
            raise checks.ArgumentError("num_symbols", f"expected num_symbols >= 2, got {num_symbols}")
        if batch_size > num_train:
            raise checks.ArgumentError("batch_size", f"expected batch_size <= num_train ({num_train}), got {batch_size}")
        self.save_hyperparameters(logger=False)  # the run logs data.* itself (rnnlab.train.flat_hparams)
        self.input_size, self.num_tags = num_symbols, num_symbols ** 2

    def model_settings(self) -> dict:
        """The tagger's sizes this data sets (see :func:`rnnlab.train.fill_model_from_data`)."""
        return {"net.input_size": self.input_size, "net.num_tags": self.num_tags}

    def generate(self, n: int, generator: torch.Generator):
        hp = self.hparams
        return make_neighbour_pair_data(n, hp.seq_len, hp.num_symbols, generator, self.sample_lengths(n, generator))
