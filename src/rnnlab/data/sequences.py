"""Sequence classification on a user's files: ``data=sequences``.

    python scripts/train.py model=classifier data=sequences data.path=train.npz data.test_path=test.npz

The training file (``path``) gives the training sequences, and the validation and test
sequences too unless ``val_path`` / ``test_path`` name files of their own: then a seeded,
stratified fraction of the training file is held out for each (test first, then
validation from the rest). Formats: :mod:`rnnlab.data.sequence_files`.

What is learnt from the training split, and kept in every checkpoint (the data module's
``state_dict``, which Lightning saves and eval and predict restore), so that evaluation and
prediction on new files preprocess exactly as training did:

- the class names: the sorted distinct labels of the training split (ints stay ints,
  strings stay strings); class i of the model is ``class_names[i]``. A validation, test or
  prediction file with a label the training split never had is refused, naming it.
- per-feature standardisation (``standardize=true``): the mean and standard deviation of
  each feature over the valid steps of the training split (padding excluded); every split
  is shifted and scaled by them, padding stays zero.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import checks
from ..errors import ConfigError
from .batching import IndexedTensorDataset, PaddedBatchDataset
from .files import FileSplitsDataModule, check_folds, checked_files
from .sequence_files import SequenceFile, read_sequences


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices, sorted: ``round(fraction * N)`` items held out, shared among the
    classes in proportion to their sizes (largest remainders get the rounding), each class's
    members drawn by a seeded permutation; both parts keep the classes' proportions."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    take = np.floor(quotas).astype(np.int64)
    extra = int(round(fraction * len(labels))) - int(take.sum())
    take[np.argsort(-(quotas - take), kind="stable")[:max(extra, 0)]] += 1
    held = [rng.permutation(np.flatnonzero(labels == label))[:n] for label, n in zip(classes, take)]
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


class SequenceFileDataModule(FileSplitsDataModule):
    """Labelled sequences from files, for sequence classification (see the module docstring).

    Batches: ``(x (B, T, D) float32, y (B,) int64)``, plus ``lengths (B,)`` when the split's
    sequences differ in length (each batch cut to its longest sequence).

    Args:
        path: the training file (.npz, .pt, .csv or .ts).
        val_path: the validation file; None holds out ``val_fraction`` of the training file.
        test_path: the test file; None holds out ``test_fraction`` of the training file.
        predict_path: a file to predict on (labels optional), for ``scripts/predict.py``.
        val_fraction, test_fraction: the stratified fractions held out when there is no
            file of their own, in (0, 1).
        standardize: standardise each feature by the training split's mean and deviation.
        id_column, label_column: CSV columns of the sequence id and of the label.
        feature_columns: CSV feature columns; None takes every other column.
        time_column: CSV column that orders a sequence's rows; None keeps the file order.
        batch_size: sequences per batch.
        seed: seed of the held-out splits and folds.
        num_folds, fold: k-fold cross-validation: the validation split is fold ``fold``
            (0 to ``num_folds`` - 1) of the training file after the test split, stratified by
            class; None: ``val_fraction``.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, path: str, val_path: str | None = None, test_path: str | None = None,
                 predict_path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 standardize: bool = True, id_column: str = "id", label_column: str = "label",
                 feature_columns: list[str] | None = None, time_column: str | None = None,
                 batch_size: int = 64, seed: int = 0, num_workers: int = 0,
                 num_folds: int | None = None, fold: int | None = None):  # pragma: no mutate block
        super().__init__()
        path, val_path, test_path, predict_path = checked_files(path, val_path, test_path, predict_path,
                                                                val_fraction, test_fraction)
        check_folds(num_folds, fold, val_path)
        checks.positive_int("batch_size", batch_size)
        if feature_columns is not None:
            feature_columns = [str(c) for c in feature_columns]
        self.save_hyperparameters(logger=False)  # the run logs data.* itself (rnnlab.train.flat_hparams)
        self.class_names: list | None = None
        self.num_features: int | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None

    # ------------------------------------------------------------ what checkpoints keep
    def state_dict(self) -> dict:
        """What training learnt from the data; Lightning saves it in every checkpoint."""
        return {"class_names": self.class_names, "num_features": self.num_features, "mean": self.mean,
                "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.class_names, self.num_features = state["class_names"], state["num_features"]
        self.mean, self.std = state["mean"], state["std"]

    def model_settings(self) -> dict:
        """The classifier's sizes and class names (see :func:`rnnlab.train.fill_model_from_data`)."""
        if self.class_names is None:
            raise RuntimeError("the data is read in setup(); call datamodule.setup() first")
        return {"net.input_size": self.num_features, "net.num_classes": len(self.class_names),
                "class_names": list(self.class_names)}

    # ------------------------------------------------------------ reading
    def read(self, key: str, labels_required: bool = True) -> SequenceFile:
        hp = self.hparams
        return read_sequences(hp[key], f"data.{key}", id_column=hp.id_column, label_column=hp.label_column,
                              feature_columns=hp.feature_columns, time_column=hp.time_column,
                              labels_required=labels_required)

    def hold_out(self, records: SequenceFile, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return stratified_split(records.labels, fraction, seed)

    def is_fitted(self) -> bool:
        return self.class_names is not None

    def fit(self, train: SequenceFile) -> None:
        """Class names and standardisation from the training split."""
        self.class_names = np.unique(train.labels).tolist()  # Python ints or strings, sorted
        self.num_features = int(train.x.shape[2])
        if self.hparams.standardize:
            valid = np.arange(train.x.shape[1])[None, :] < train.lengths[:, None]  # (N, T)
            steps = train.x[valid].astype(np.float64)  # (valid steps, D): padding left out
            std = steps.std(axis=0)
            self.mean, self.std = steps.mean(axis=0).tolist(), np.where(std > 0, std, 1.0).tolist()

    def dataset(self, data: SequenceFile):
        key = data.key
        if data.x.shape[2] != self.num_features:
            raise ConfigError(key, f"{str(data.path)!r} has {data.x.shape[2]} features per step, the training "
                                   f"data {self.num_features}")
        x = torch.from_numpy(data.x)  # (N, T, D)
        if self.mean is not None:
            valid = torch.arange(x.shape[1])[None, :, None] < torch.from_numpy(data.lengths)[:, None, None]
            mean, std = torch.tensor(self.mean, dtype=torch.float32), torch.tensor(self.std, dtype=torch.float32)
            x = torch.where(valid, (x - mean) / std, torch.zeros(()))  # padding stays zero
        y = torch.from_numpy(self.class_indices(data, key))
        lengths = torch.from_numpy(data.lengths)
        if bool((lengths == x.shape[1]).all()):
            return IndexedTensorDataset(x, y)
        return PaddedBatchDataset(x, y, lengths, time_dims=(True, False, False))

    def class_indices(self, data: SequenceFile, key: str) -> np.ndarray:
        """(N,) int64 class index of each sequence's label; -100 where the file has none."""
        if data.labels is None:
            return np.full(len(data), -100, dtype=np.int64)
        index = {name: i for i, name in enumerate(self.class_names)}
        labels = data.labels.tolist()  # Python ints or strings, as the class names are
        indices = np.array([index.get(v, -1) for v in labels], dtype=np.int64)
        unseen = np.flatnonzero(indices < 0)
        if len(unseen):
            i = int(unseen[0])
            label = labels[i]
            names = ", ".join(repr(c) for c in self.class_names[:20]) + (", ..." if len(self.class_names) > 20 else "")
            raise ConfigError(key, f"{str(data.path)!r}: {data.name(i)} has label {label!r}, which the training data "
                                   f"never has; the model knows {len(self.class_names)} classes: {names}")
        return indices
