"""Data modules written as a user would write them, outside rnnlab: plain
LightningDataModules over TensorDatasets, for the tests of the data contract
(``data._target_=userdata.<Class>``; a subprocess needs ``tests`` on PYTHONPATH)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class _Splits(L.LightningDataModule):
    """Three splits of make(n, generator)'s tensors; batches are their rows."""

    def __init__(self, num_sequences: int = 600, batch_size: int = 32, seed: int = 0):
        super().__init__()
        self.num_sequences, self.batch_size, self.seed = num_sequences, batch_size, seed

    def make(self, n: int, generator: torch.Generator) -> tuple:
        raise NotImplementedError

    def setup(self, stage=None):
        tensors = self.make(self.num_sequences, torch.Generator().manual_seed(self.seed))
        n = self.num_sequences // 5
        self.sets = {split: TensorDataset(*(t[part] for t in tensors)) for split, part in
                     (("val", slice(0, n)), ("test", slice(n, 2 * n)), ("train", slice(2 * n, None)))}

    def train_dataloader(self):
        return DataLoader(self.sets["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.sets["val"], batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.sets["test"], batch_size=self.batch_size)


class Series(_Splits):
    """12 features, 9 classes, lengths 7-29: the class is which feature carries the largest
    mean over the sequence's valid steps (features 9-11 are noise). Batches (x, y, lengths)."""

    def make(self, n, g):
        lengths = torch.randint(7, 30, (n,), generator=g)
        y = torch.randint(0, 9, (n,), generator=g)
        x = torch.randn(n, 29, 12, generator=g)
        x[torch.arange(n), :, y] += 2.0
        x = x * (torch.arange(29)[None, :, None] < lengths[:, None, None])  # zero past each length
        return x, y, lengths

    def model_settings(self):
        return {"net.input_size": 12, "net.num_classes": 9}


class Steps(_Splits):
    """Tagging: the tag of each step is the index of its largest of 5 features. Batches (x, tags)."""

    def make(self, n, g):
        x = torch.randn(n, 15, 5, generator=g)
        return x, x.argmax(-1)

    def model_settings(self):
        return {"net.input_size": 5, "net.num_tags": 5}


class Counting(_Splits):
    """Language modelling over 7 ids counting up: next_ids = ids + 1 (mod 7). Batches (ids, next_ids)."""

    def make(self, n, g):
        ids = (torch.randint(0, 7, (n, 1), generator=g) + torch.arange(16)) % 7
        return ids, (ids + 1) % 7

    def model_settings(self):
        return {"net.vocab_size": 7}


class SeriesWithoutSettings(Series):
    """The same batches, but the module says nothing of the model's sizes."""

    model_settings = None


class FloatLabels(Series):
    """Labels as floats: not a classification batch."""

    def make(self, n, g):
        x, y, lengths = super().make(n, g)
        return x, y.float(), lengths


class StepsWithoutSettings(Steps):
    """Tagging batches, but the module says nothing of the model's sizes."""

    model_settings = None
