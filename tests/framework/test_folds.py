"""k-fold cross-validation of the file data modules (data.num_folds, data.fold): the folds
partition what the test split leaves, are stratified and seeded, and keep one test split."""

import numpy as np
import pytest

from datafiles import make_sentences, make_sequences, write_conll, write_sequences
from rnnlab.data import ConllDataModule, SequenceFileDataModule
from rnnlab.data.files import fold_ids
from rnnlab.errors import ConfigError


def test_fold_ids_partition_evenly_and_stratify_each_class():
    labels = np.array([0] * 47 + [1] * 23 + [2] * 11)
    folds = fold_ids(len(labels), 5, seed=3, labels=labels)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.sum() == 81 and sizes.max() - sizes.min() <= 1
    for label in range(3):  # each class spread over the folds to within one item
        per_fold = np.bincount(folds[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    assert np.array_equal(fold_ids(81, 5, seed=3, labels=labels), folds)
    assert not np.array_equal(fold_ids(81, 5, seed=4, labels=labels), folds)
    plain = fold_ids(81, 5, seed=3)
    assert np.bincount(plain).max() - np.bincount(plain).min() <= 1
    # dealt after a seeded shuffle: not the file's order, and another seed deals other folds
    assert not np.array_equal(plain, np.arange(81) % 5)
    assert np.array_equal(fold_ids(81, 5, seed=3), plain) and not np.array_equal(fold_ids(81, 5, seed=4), plain)


def _ids(data, split):
    return sorted(data.files[split].ids.tolist())


def test_each_fold_validates_on_its_own_part_and_all_folds_share_the_test_split(tmp_path):
    sequences, labels = make_sequences(120)
    path = write_sequences(tmp_path / "train", sequences, labels, "npz")
    runs = []
    for fold in range(4):
        data = SequenceFileDataModule(str(path), test_fraction=0.2, num_folds=4, fold=fold)
        data.setup("fit")
        runs.append({split: _ids(data, split) for split in ("train", "val", "test")})
        names = np.array(data.files["val"].labels)
        pool = np.concatenate([data.files["train"].labels, data.files["val"].labels])
        for name in set(pool):  # stratified: each class's share of the fold is its share of the pool
            assert abs((names == name).sum() - (pool == name).sum() / 4) <= 1
    test = runs[0]["test"]
    assert all(run["test"] == test for run in runs) and len(test) == 24
    vals = [set(run["val"]) for run in runs]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])  # disjoint
    pool = set(runs[0]["train"]) | set(runs[0]["val"])
    assert set().union(*vals) == pool and not pool & set(test)  # together: everything but the test split
    for run in runs:
        assert not set(run["train"]) & set(run["val"]) and set(run["train"]) | set(run["val"]) == pool


def test_conll_folds_partition_the_sentences(tmp_path):
    path = write_conll(tmp_path / "train.txt", make_sentences(60))
    vals = []
    for fold in range(3):
        data = ConllDataModule(str(path), test_fraction=0.1, num_folds=3, fold=fold, min_freq=1)
        data.setup("fit")
        vals.append(len(data.files["val"]))
        assert len(data.files["train"]) + len(data.files["val"]) + len(data.files["test"]) == 60
    assert sum(vals) == 54 and max(vals) - min(vals) <= 1


@pytest.mark.parametrize("kwargs, key, message", [
    ({"fold": 1}, "data.fold", "expected data.num_folds with data.fold=1"),
    ({"num_folds": 5, "fold": 5}, "data.fold", "expected the validation fold, an int in [0, 4], got 5"),
    ({"num_folds": 5}, "data.fold", "got None"),
    ({"num_folds": 1, "fold": 0}, "data.num_folds", "expected at least 2 folds, got 1"),
    ({"num_folds": 3, "fold": 0, "val_path": "VAL"}, "data.val_path", "expected val_path=null"),
])
def test_impossible_fold_settings_are_refused_naming_the_key(tmp_path, kwargs, key, message):
    path = write_sequences(tmp_path / "train", *make_sequences(20), "npz")
    if kwargs.get("val_path") == "VAL":
        kwargs = {**kwargs, "val_path": str(path)}
    with pytest.raises(ConfigError) as err:
        SequenceFileDataModule(str(path), **kwargs)
    assert err.value.key == key and message in str(err.value)


def test_char_folds_cut_the_training_and_validation_text_into_blocks_and_keep_the_test_text(tmp_path):
    from rnnlab.data import CharDataModule

    text = "".join(chr(ord("a") + i % 26) + ("\n" if i % 50 == 49 else "") for i in range(6000))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    runs = []
    for fold in range(3):
        data = CharDataModule(str(path), seq_len=16, splits=(0.8, 0.1, 0.1), num_folds=3, fold=fold)
        runs.append(data._text_splits())
    n = len(text)
    pool, test = text[:int(n * 0.8) + int(n * 0.1)], text[int(n * 0.8) + int(n * 0.1):]
    assert all(run["test"] == test for run in runs)
    assert "".join(run["val"] for run in runs) == pool  # contiguous blocks, in order, covering the pool
    for fold, run in enumerate(runs):
        others = [r["val"] for i, r in enumerate(runs) if i != fold]
        assert run["train"] == "\n\n".join(others)


def test_char_folds_by_document_deal_whole_documents(tmp_path):
    from rnnlab.data import CharDataModule

    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " * 30)
    vals, tests = [], set()
    for fold in range(4):
        data = CharDataModule(str(tmp_path), seq_len=8, split_by="documents", num_folds=4, fold=fold)
        parts = data._text_splits()
        vals.append(set(parts["val"].split("\n\n")))
        assert not vals[-1] & set(parts["train"].split("\n\n"))
        tests.add(test := parts["test"])
    assert len(tests) == 1  # one test split for every fold
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])
    assert len(set().union(*vals)) + len(test.split("\n\n")) == 12
