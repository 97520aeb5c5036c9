"""Batching for in-memory tensors: whole batches by index, epoch-seeded order, DDP shards.

A ``DataLoader`` with ``batch_size=B`` fetches B samples one by one and stacks them
(``default_collate``): B Python calls and one copy per batch. For data that already
sits in a tensor, indexing it with the batch's index tensor is a single gather. The
datasets here keep the usual one-sample ``__getitem__`` and add ``gather(indices)``, a
whole batch at once; :func:`batched_loader` hands each batch of indices from its
``batch_sampler`` to ``gather`` (through ``__getitems__``, which PyTorch's loader calls
with a batch's indices) and passes the gathered batch on without collating it.

The order of an epoch is a pure function of (seed, epoch, rank), not of a random
generator's running state. So a run resumed from a checkpoint at epoch e sees exactly
the batches an uninterrupted run would, and under DDP every process takes its own shard
of the same permutation. Lightning calls ``set_epoch`` on the loader's sampler before
each training epoch; rnnlab's configs therefore set ``use_distributed_sampler: false``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, TensorDataset

from .. import checks


class IndexedTensorDataset(TensorDataset):
    """A ``TensorDataset`` that also gathers a whole batch: ``gather(indices)`` returns each
    tensor indexed by the batch's indices, (B, ...)."""

    def gather(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


class PaddedBatchDataset(IndexedTensorDataset):
    """Variable-length sequences stored padded to the longest, with their lengths last.

    A batch is cut to its own longest sequence (the collate step of a variable-length
    dataset), so short batches do not pay for the longest sequence of the whole split.
    Tensors with a time dimension are (N, T_max, ...); ``lengths`` is (N,) int64.
    """

    def __init__(self, *tensors: torch.Tensor, time_dims: tuple[bool, ...]):
        super().__init__(*tensors)
        self.time_dims = time_dims

    def gather(self, indices: list[int]):
        batch = super().gather(indices)  # each (B, T_max, ...) or (B,)
        longest = int(batch[-1].max())
        return tuple(t[:, :longest] if has_time else t for t, has_time in zip(batch, self.time_dims))


class EpochSampler(Sampler[int]):
    """Indices in [0, size) for one epoch, seeded by (seed, epoch), sharded by rank.

    Args:
        size: number of items to draw from.
        shuffle: permute the items (else keep their order).
        num_samples: items per epoch over all ranks; None means each item once.
        replacement: draw ``num_samples`` items uniformly with replacement.
        seed: base seed of the order.
        rank, world_size: this process's shard. Training shards are padded (by wrapping
            around) to equal length, as DDP needs the same number of steps everywhere;
            evaluation shards (``pad=False``) are not, so no item counts twice.
    """

    def __init__(self, size: int, shuffle: bool, num_samples: int | None = None, replacement: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.size, self.shuffle, self.replacement = size, shuffle, replacement
        self.num_samples = num_samples if num_samples is not None else size
        self.seed, self.rank, self.world_size, self.pad = seed, rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.replacement:
            return torch.randint(self.size, (self.num_samples,), generator=g)
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        repeats = -(-self.num_samples // self.size)  # ceil: more samples than items wraps around
        return order.repeat(repeats)[: self.num_samples]

    def __iter__(self):
        indices = self._epoch_indices()
        if self.world_size > 1:
            if self.pad:
                per_rank = -(-len(indices) // self.world_size)
                indices = indices.repeat(2)[: per_rank * self.world_size]
            indices = indices[self.rank::self.world_size]
        return iter(indices.tolist())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_samples
        if self.pad:
            return -(-self.num_samples // self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` that passes ``set_epoch`` on to its :class:`EpochSampler`."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class Batches(Dataset):
    """What :func:`batched_loader` reads: ``dataset``, whose ``gather`` serves a whole batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, indices: list[int]):
        return self.dataset.gather(indices)


def gathered(batch):
    """The loader's ``collate_fn``: :meth:`Batches.__getitems__` already made the batch."""
    return batch


def batched_loader(dataset, batch_size: int, sampler: EpochSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader that gathers whole batches of ``sampler``'s indices (``dataset.gather``)."""
    return DataLoader(Batches(dataset), batch_sampler=EpochBatchSampler(sampler, batch_size, drop_last=False),
                      collate_fn=gathered, num_workers=num_workers, persistent_workers=num_workers > 0)


def shard(module: L.LightningDataModule) -> dict:
    """This process's (rank, world_size) and the run's seed, from the trainer Lightning
    attaches to the data module (``module.trainer``; none outside a fit: rank 0 of 1)."""
    trainer = module.trainer
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return {"rank": rank, "world_size": world_size, "seed": torch.initial_seed() % 2**31}


def overfitting(module: L.LightningDataModule) -> bool:
    """Whether the attached trainer runs with ``overfit_batches`` (``debug=overfit``): the
    training loader then yields the same batches, in the same order, every epoch.
    (Lightning's own fix for this, swapping in a ``SequentialSampler``, would hand out
    single samples instead of batches from these loaders.)"""
    trainer = module.trainer
    return trainer is not None and bool(getattr(trainer, "overfit_batches", 0))


def check_min_len(min_len, seq_len: int) -> None:
    if min_len is not None and not (isinstance(min_len, int) and 1 <= min_len <= seq_len):
        raise checks.ArgumentError("min_len", f"expected min_len in [1, seq_len={seq_len}] or None, got {min_len!r}")


class SplitsDataModule(L.LightningDataModule):
    """Base for data modules that hold their splits in memory, as datasets with ``gather``
    (:class:`IndexedTensorDataset`, :class:`PaddedBatchDataset`) in ``self.splits``:
    "train", "val", "test" and, for modules that predict, "predict". Training batches
    come in the epoch's seeded order, the others in file order, each rank its own shard.
    Subclasses save ``batch_size`` and ``num_workers`` in their hyperparameters.
    """

    splits: dict

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.splits[split]
        sampler = EpochSampler(len(dataset), shuffle=train and not overfitting(self), pad=train, **shard(self))
        return batched_loader(dataset, self.hparams.batch_size, sampler, num_workers=self.hparams.num_workers)

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val", train=False)

    def test_dataloader(self):
        return self._loader("test", train=False)


class GeneratedSplitsDataModule(SplitsDataModule):
    """Base for synthetic tasks: train/val/test tensors generated in memory from a seed.

    Subclasses call ``save_hyperparameters()`` with ``num_train``, ``num_val``,
    ``num_test``, ``batch_size``, ``seed`` and ``num_workers`` among their arguments,
    and implement :meth:`generate`. Each split draws from its own generator stream, so
    changing one split's size leaves the others unchanged.
    """

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def sample_lengths(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """(n,) lengths uniform in [min_len, seq_len] if ``min_len`` is set, else None."""
        hp = self.hparams
        if hp.get("min_len") is None:
            return None
        return torch.randint(hp.min_len, hp.seq_len + 1, (n,), generator=generator)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "splits", None):
            return
        hp = self.hparams
        self.splits = {}
        for offset, (split, n) in enumerate((("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test))):
            g = torch.Generator().manual_seed(hp.seed * 1000 + offset)
            tensors = self.generate(n, g)
            if hp.get("min_len") is None:
                self.splits[split] = IndexedTensorDataset(*tensors)
            else:  # (x, y, lengths): x always has a time dimension, y only for tagging
                self.splits[split] = PaddedBatchDataset(*tensors, time_dims=(True, tensors[1].dim() == 2, False))
