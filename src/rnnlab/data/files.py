"""What the data modules that read a user's files share: which file each split comes from,
held-out splits, what is learnt from the training split and kept in checkpoints, and the
staged reading that lets eval and predict read only the file they are given.

A split comes from its own file (``val_path``, ``test_path``) or, where none is given, is
held out from the training file (``path``) with a seeded draw: the test split first, then
the validation split from the rest. With ``num_folds`` (k-fold cross-validation) the
validation split is instead fold ``fold`` of the rest, cut into ``num_folds`` seeded folds
(stratified by class where the module's records have labels); the test split stays the same
for every fold. Whatever a module learns from the training split (class
names, a vocabulary, feature statistics) is its ``state_dict()``, which Lightning saves in
every checkpoint; eval and predict load it back (``load_state_dict``) before ``setup``, so
new files are read exactly as training read its own, without the training file.
"""

from __future__ import annotations

import os

import numpy as np

from .. import checks
from ..errors import ConfigError
from .batching import SplitsDataModule


def absolute(name: str, path) -> str | None:
    """``path`` made absolute (so a checkpoint's data config finds it from any directory)."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise checks.ArgumentTypeError(name, f"expected {name} to be a file path or None, got {path!r} "
                                             f"({type(path).__name__})")
    return os.path.abspath(os.path.expanduser(str(path)))


def check_fraction(name: str, value) -> float:
    if not checks.is_number(value) or not 0 < value < 1:
        raise checks.ArgumentError(name, f"expected {name} in (0, 1), got {value!r}")
    return float(value)


def checked_files(path, val_path, test_path, predict_path, val_fraction, test_fraction) -> tuple[str | None, ...]:
    """A file data module's (path, val_path, test_path, predict_path) made absolute, once its
    held-out fractions are checked."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    return tuple(absolute(name, value) for name, value in (("path", path), ("val_path", val_path),
                                                            ("test_path", test_path), ("predict_path", predict_path)))


def check_folds(num_folds, fold, val_path) -> None:
    """Refuse a cross-validation setting that cannot be run: ``fold`` without ``num_folds``,
    a fold out of range, or a validation file beside the folds."""
    if num_folds is None:
        if fold is not None:
            raise ConfigError("data.fold", f"expected data.num_folds with data.fold={fold!r} (k-fold "
                                           "cross-validation), got num_folds=null")
        return
    checks.positive_int("num_folds", num_folds)
    if num_folds < 2:
        raise ConfigError("data.num_folds", f"expected at least 2 folds, got {num_folds}")
    if not checks.is_int(fold) or not 0 <= fold < num_folds:
        raise ConfigError("data.fold", f"expected the validation fold, an int in [0, {num_folds - 1}], got {fold!r}")
    if val_path is not None:
        raise ConfigError("data.val_path", "cross-validation (data.num_folds) takes each validation fold from the "
                                           f"training file; expected val_path=null, got {val_path!r}")


def fold_ids(n: int, num_folds: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Each of n items' fold in [0, num_folds): a seeded permutation dealt round-robin, class
    by class when ``labels`` are given (stratified: every fold gets each class's share, to
    within one item, and the folds' sizes differ by at most one)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
    else:
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % num_folds
    return folds


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices, sorted: a seeded ``round(fraction * n)`` of range(n) held out."""
    held = np.sort(np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))])
    return np.setdiff1d(np.arange(n), held), held


class FileSplitsDataModule(SplitsDataModule):
    """Base of the data modules over a user's files (``path``, ``val_path``, ``test_path``,
    ``predict_path``, ``val_fraction``, ``test_fraction``, ``seed`` in their hyperparameters).

    Subclasses implement :meth:`read` (one file, as records with ``len`` and ``subset``),
    :meth:`hold_out`, :meth:`fit` (learn from the training records), :meth:`is_fitted`,
    :meth:`dataset` (records to a dataset with ``gather``), and ``state_dict`` /
    ``load_state_dict`` for what :meth:`fit` learnt. ``self.files[split]`` keeps each split's
    records (predictions name their sequences and tokens from them).
    """

    SPLITS = ("train", "val", "test")
    RECORDS = "sequences"  # what a file holds, for messages

    def __init__(self):
        super().__init__()
        self.splits: dict = {}
        self.files: dict = {}

    # ------------------------------------------------------------ subclass API
    def read(self, key: str, labels_required: bool = True):
        """The records of the file that ``data.<key>`` names."""
        raise NotImplementedError

    def hold_out(self, records, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept, held out) indices of ``records`` for a held-out split."""
        return random_split(len(records), fraction, seed)

    def folds(self, records, num_folds: int, seed: int) -> np.ndarray:
        """Each record's cross-validation fold (:func:`fold_ids`); stratified where records have labels."""
        return fold_ids(len(records), num_folds, seed, getattr(records, "labels", None))

    def fit(self, train) -> None:
        raise NotImplementedError

    def is_fitted(self) -> bool:
        raise NotImplementedError

    def dataset(self, records):
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def _held_out(self, train) -> dict:
        """The training file's records split into train and, where no file is given, test and val."""
        hp = self.hparams
        parts, rest = {}, train
        for offset, split in enumerate(("test", "val")):
            if hp[f"{split}_path"] is not None:
                continue
            if split == "val" and hp.get("num_folds") is not None:
                folds = self.folds(rest, hp.num_folds, hp.seed * 1000 + 2)
                held, kept = np.flatnonzero(folds == hp.fold), np.flatnonzero(folds != hp.fold)
                if len(held) == 0:
                    raise ConfigError("data.num_folds", f"{hp.path!r} leaves {len(rest)} {self.RECORDS} after the "
                                                        f"test split, too few for {hp.num_folds} folds")
                parts[split], rest = rest.subset(held), rest.subset(kept)
                continue
            fraction = hp[f"{split}_fraction"]
            kept, held = self.hold_out(rest, fraction, hp.seed * 1000 + offset)
            if len(held) == 0 or len(kept) == 0:
                raise ConfigError(f"data.{split}_fraction",
                                  f"{hp.path!r} has {len(train)} {self.RECORDS}, too few to hold out "
                                  f"{fraction:g} of them for {split} ({len(held)} held out, {len(kept)} left); "
                                  f"give data.{split}_path, or a larger file")
            parts[split], rest = rest.subset(held), rest.subset(kept)
        parts["train"] = rest
        return parts

    def setup(self, stage: str | None = None) -> None:
        """Read what ``stage`` needs: "fit" (or None) every split, learning from the training
        split; "validate", "test" and "predict" their own file, and the training file only
        where their split is held out from it or nothing was learnt yet (no checkpoint's state
        loaded with ``load_state_dict``). Every file is checked as it is read, before any
        training step."""
        hp = self.hparams
        needed = {"predict": ["predict"], "test": ["test"], "validate": ["val"]}.get(stage, list(self.SPLITS))
        if all(split in self.splits for split in needed):
            return
        if "predict" in needed and hp.predict_path is None:
            raise ConfigError("data.predict_path", "expected a file to predict on, got no value")
        files = {}
        from_training_file = [s for s in needed if s == "train" or (s != "predict" and hp[f"{s}_path"] is None)]
        if from_training_file or not self.is_fitted():
            files.update(self._held_out(self.read("path")))
            if not self.is_fitted():
                self.fit(files["train"])
        for split in needed:
            if split == "predict":
                files[split] = self.read("predict_path", labels_required=False)
            elif split != "train" and hp[f"{split}_path"] is not None:
                files[split] = self.read(f"{split}_path")
        for split, records in files.items():
            self.files[split] = records
            self.splits[split] = self.dataset(records)

    def predict_dataloader(self):
        return self._loader("predict", train=False)
