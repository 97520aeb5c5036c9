"""Batching for in-memory tensors without per-sample collation.

A ``DataLoader`` with ``batch_size=B`` fetches B samples one by one and stacks them
(``default_collate``): B Python calls and one copy per batch. For data that already
sits in a tensor, indexing it with the batch's index tensor is a single gather. Passing
a ``BatchSampler`` as ``sampler`` and ``batch_size=None`` makes the loader hand the whole
index list to ``__getitem__`` at once and skip collation.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


class IndexedTensorDataset(TensorDataset):
    """A ``TensorDataset`` whose ``__getitem__`` also takes a list of indices."""

    def __getitem__(self, index):
        if isinstance(index, list):
            index = torch.as_tensor(index)
        return tuple(t[index] for t in self.tensors)


def batched_loader(dataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                   num_workers: int = 0, sampler=None) -> DataLoader:
    """A DataLoader that fetches whole batches by index from ``dataset``.

    ``sampler`` (indices one by one) replaces the default random or sequential order.
    """
    base = sampler or (RandomSampler(dataset) if shuffle else SequentialSampler(dataset))
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last), batch_size=None,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


class GeneratedSplitsDataModule(L.LightningDataModule):
    """Base for synthetic tasks: train/val/test tensors generated in memory from a seed.

    Subclasses call ``save_hyperparameters()`` with ``num_train``, ``num_val``,
    ``num_test``, ``batch_size``, ``seed`` and ``num_workers`` among their arguments,
    and implement :meth:`generate`. Each split draws from its own generator stream, so
    changing one split's size leaves the others unchanged.
    """

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "splits", None):
            return
        hp = self.hparams
        self.splits = {}
        for offset, (split, n) in enumerate((("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test))):
            g = torch.Generator().manual_seed(hp.seed * 1000 + offset)
            self.splits[split] = IndexedTensorDataset(*self.generate(n, g))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return batched_loader(self.splits[split], self.hparams.batch_size, shuffle=shuffle,
                              num_workers=self.hparams.num_workers)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)
