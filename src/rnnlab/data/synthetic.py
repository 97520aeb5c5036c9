"""The seed article's task: is the mean of a Gaussian sequence positive?

Each sample is a (T, D) sequence of independent standard normal values (T=20, D=10 by
default), labelled 1 when the mean over all T*D values is positive, else 0. The label
depends on every step equally, so the model must integrate the whole sequence into its
final state.
"""

from __future__ import annotations

import torch

from .. import checks
from .batching import GeneratedSplitsDataModule, check_min_len


def make_mean_sign_data(n: int, seq_len: int, input_size: int, generator: torch.Generator,
                        lengths: torch.Tensor | None = None):
    """Return x (n, T, D) float32 and y (n,) int64 with y = [mean(x) > 0].

    With ``lengths`` (n,), sequence i has lengths[i] valid steps, x is zero after them,
    the mean runs over the valid steps only, and (x, y, lengths) is returned.
    """
    x = torch.randn(n, seq_len, input_size, generator=generator)  # (N, T, D)
    if lengths is None:
        return x, (x.mean(dim=(1, 2)) > 0).long()
    valid = (torch.arange(seq_len)[None, :] < lengths[:, None]).unsqueeze(-1)  # (N, T, 1)
    x = x * valid
    return x, (x.sum(dim=(1, 2)) > 0).long(), lengths  # the sign of the sum is the sign of the mean


class SyntheticSequenceDataModule(GeneratedSplitsDataModule):
    """Train/val/test splits of the mean-sign task, generated in memory from ``seed``.

    Args:
        num_train, num_val, num_test: samples per split.
        seq_len: time steps T per sequence.
        input_size: features D per step.
        num_classes: always 2 for this task (the sign of the mean).
        batch_size: samples per batch.
        seed: generator seed; each split draws from its own stream, so changing one
            split's size leaves the others unchanged.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        min_len: if set, sequence lengths are uniform in [min_len, seq_len], batches are
            (x padded with zeros, y, lengths) and each batch is cut to its longest sequence.
    """

    def __init__(self, num_train: int = 10000, num_val: int = 2000, num_test: int = 2000,
                 seq_len: int = 20, input_size: int = 10, num_classes: int = 2,
                 batch_size: int = 64, seed: int = 0, num_workers: int = 0, min_len: int | None = None):
        super().__init__()
        for name in ("num_train", "num_val", "num_test", "seq_len", "input_size", "batch_size"):
            checks.positive_int(name, locals()[name])
        check_min_len(min_len, seq_len)
        if num_classes != 2:
            raise checks.ArgumentError("num_classes", f"expected num_classes=2 for the mean-sign task, got {num_classes}")
        if batch_size > num_train:
            raise checks.ArgumentError("batch_size", f"expected batch_size <= num_train ({num_train}), got {batch_size}")
        self.save_hyperparameters(logger=False)  # the run logs data.* itself (rnnlab.train.flat_hparams)
        self.input_size, self.num_classes = input_size, num_classes

    def model_settings(self) -> dict:
        """The classifier's sizes this data sets (see :func:`rnnlab.train.fill_model_from_data`)."""
        return {"net.input_size": self.input_size, "net.num_classes": self.num_classes}

    def generate(self, n: int, generator: torch.Generator):
        hp = self.hparams
        return make_mean_sign_data(n, hp.seq_len, hp.input_size, generator, self.sample_lengths(n, generator))
