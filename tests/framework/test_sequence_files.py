"""Sequence files (data=sequences): every format reads the same sequences, labels of any kind
become class indices, held-out splits are stratified and seeded, standardisation is the
training split's, and every unusable file is named with its own reason."""

import re

import numpy as np
import pytest
import torch

from datafiles import FORMATS, make_sequences, write_sequences
from rnnlab.data import SequenceFileDataModule
from rnnlab.data.sequence_files import read_sequences
from rnnlab.data.sequences import stratified_split
from rnnlab.errors import ConfigError


def padded(sequences):
    lengths = np.array([len(s) for s in sequences])
    x = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    return x, lengths


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_sequences_lengths_and_labels(fmt, tmp_path):
    sequences, labels = make_sequences(20)
    path = write_sequences(tmp_path / "train", sequences, labels, fmt)
    data = read_sequences(path, "data.path", time_column="t" if fmt == "csv" else None)
    if fmt == "csv":  # sequences in the order their ids first appear in the (shuffled) rows
        order = [int(i[1:]) for i in data.ids]
        sequences, labels = [sequences[i] for i in order], [labels[i] for i in order]
        assert sorted(order) == list(range(20))
    x, lengths = padded(sequences)
    np.testing.assert_array_equal(data.lengths, lengths)
    np.testing.assert_allclose(data.x, x, rtol=0, atol=1e-6)  # CSV and .ts hold decimal text
    assert list(data.labels) == labels
    if fmt != "csv":
        assert list(data.ids) == list(range(20))


def test_a_padded_pt_tensor_with_lengths_and_univariate_arrays_are_read(tmp_path):
    sequences, labels = make_sequences(6, num_features=1)
    x, lengths = padded(sequences)
    torch.save({"x": torch.from_numpy(x), "lengths": torch.from_numpy(lengths), "y": torch.tensor([3, 1, 2, 3, 1, 2])},
               tmp_path / "a.pt")
    np.savez(tmp_path / "b.npz", x=x[:, :, 0], y=np.arange(6))  # (N, T): one feature, all T steps
    a = read_sequences(tmp_path / "a.pt", "data.path")
    b = read_sequences(tmp_path / "b.npz", "data.path")
    np.testing.assert_array_equal(a.x, x)
    assert list(a.labels) == [3, 1, 2, 3, 1, 2] and a.labels.dtype == np.int64
    assert b.x.shape == (6, x.shape[1], 1) and list(b.lengths) == [x.shape[1]] * 6


def test_the_ts_reader_follows_the_formats_description(tmp_path):
    """Comments, header keys in any case and order, equal-length univariate series, labels in
    the header, ? for a missing value."""
    path = tmp_path / "Univariate_TRAIN.ts"
    path.write_text("# A comment\n@problemName Uni\n@TIMESTAMPS false\n@univariate true\n@equalLength true\n"
                    "@seriesLength 3\n@classLabel true 1 2\n\n@data\n"
                    "1.0,2.0,3.0:2\n-1.5e-1,0,4:1\n")
    data = read_sequences(path, "data.path")
    np.testing.assert_allclose(data.x[:, :, 0], [[1, 2, 3], [-0.15, 0, 4]])
    assert list(data.labels) == [2, 1] and list(data.lengths) == [3, 3]
    assert data.name(1) == "line 11"
    missing = tmp_path / "Missing.ts"
    missing.write_text("@problemName M\n@missing true\n@classLabel true a b\n@data\n1,2:3,4:a\n1,?:3,4:b\n")
    with pytest.raises(ConfigError, match=re.escape(f"data.path: '{missing}': line 6 has nan at step 1, feature 0; "
                                                    "expected finite values")):
        read_sequences(missing, "data.path")


def test_ts_cases_of_their_own_lengths_several_dimensions_and_files_to_predict(tmp_path):
    path = tmp_path / "Multi_TRAIN.ts"
    path.write_text("@problemName Multi\n@dimensions 2\n@equalLength false\n@classLabel true up down\n@data\n"
                    "1,2,3:4,5,6:up\n# a comment among the cases\n\n7:8:down\n")
    data = read_sequences(path, "data.path")
    assert data.x.shape == (2, 3, 2) and list(data.lengths) == [3, 1]
    assert data.x[0].tolist() == [[1, 4], [2, 5], [3, 6]] and data.x[1].tolist() == [[7, 8], [0, 0], [0, 0]]
    assert list(data.labels) == ["up", "down"] and data.where == ["line 6", "line 9"]
    unlabelled = tmp_path / "Multi_PREDICT.ts"
    unlabelled.write_text("@problemName Multi\n@classLabel false\n@data\n1,2:3,4\n")
    data = read_sequences(unlabelled, "data.predict_path", labels_required=False)
    assert data.labels is None and data.x.tolist() == [[[1, 3], [2, 4]]]
    no_header_labels = tmp_path / "Plain.ts"  # no @classLabel at all: no labels
    no_header_labels.write_text("@data\n1,2\n")
    assert read_sequences(no_header_labels, "data.predict_path", labels_required=False).labels is None


def test_a_pt_file_of_a_padded_tensor_zeroes_past_its_lengths_and_a_list_to_predict_needs_no_y(tmp_path):
    torch.save({"x": torch.arange(6.0).reshape(2, 3, 1), "y": torch.tensor([1, 0]), "lengths": [3, 1]},
               tmp_path / "padded.pt")
    data = read_sequences(tmp_path / "padded.pt", "data.path")
    assert data.x[:, :, 0].tolist() == [[0, 1, 2], [3, 0, 0]] and list(data.lengths) == [3, 1]
    assert list(data.labels) == [1, 0]
    torch.save({"x": [torch.ones(2), torch.full((3,), 2.0)]}, tmp_path / "predict.pt")
    data = read_sequences(tmp_path / "predict.pt", "data.predict_path", labels_required=False)
    assert data.x[:, :, 0].tolist() == [[1, 1, 0], [2, 2, 2]] and list(data.lengths) == [2, 3]
    assert data.labels is None


DICT = "expected a dict with x (an (N, T, D) tensor or a list of (T_i, D) tensors) and y (N,), got "
BAD_PT = {
    "tensor": (torch.zeros(2, 3, 1), ": " + DICT + "Tensor"),
    "no_x": ({"inputs": torch.zeros(2, 3, 1), "y": [0, 1]}, ": " + DICT + "['inputs', 'y']"),
    "no_y": ({"x": torch.zeros(2, 3, 1)}, ": " + DICT + "['x']"),
    "x_int": ({"x": 5, "y": [0, 1]}, ": expected x to be a tensor or a list of tensors, got int"),
    "x_4d": ({"x": torch.zeros(2, 3, 1, 1), "y": [0, 1]}, ": expected x of shape (N, T, D), got (2, 3, 1, 1)"),
    "lengths_shape": ({"x": torch.zeros(2, 3, 1), "y": [0, 1], "lengths": torch.tensor([[3, 3]])},
                      ": expected lengths of shape (2,) ints, got (1, 2) int64"),
    "lengths_float": ({"x": torch.zeros(2, 3, 1), "y": [0, 1], "lengths": torch.tensor([3.0, 3.0])},
                      ": expected lengths of shape (2,) ints, got (2,) float32"),
    "list_3d": ({"x": [torch.zeros(3, 1), torch.zeros(2, 1, 1)], "y": [0, 1]},
                ": sequence 1 is a (2, 1, 1) tensor; expected a (T, D) tensor"),
    "list_str": ({"x": [torch.zeros(3, 1), "abc"], "y": [0, 1]}, ": sequence 1 is a str; expected a (T, D) tensor"),
    "numpy": ({"x": np.zeros((2, 3, 1)), "y": [0, 1]}, " holds a numpy."),
    "corrupt": (None, " is not a readable .pt file (RuntimeError)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PT))
def test_every_unusable_pt_file_is_named_with_its_own_reason(kind, tmp_path):
    content, message = BAD_PT[kind]
    path = tmp_path / "bad.pt"
    if content is None:
        path.write_bytes(b"PK\x03\x04 not a zip archive")
    else:
        torch.save(content, path)
    with pytest.raises(ConfigError) as raised:
        read_sequences(path, "data.path")
    assert str(raised.value).startswith(f"data.path: {str(path)!r}" + message), str(raised.value)
    if kind == "numpy":  # the class torch refused, then what to save instead
        assert str(raised.value).endswith("; expected tensors, lists of tensors and lists of ints or strings "
                                          "(torch.save({'x': ..., 'y': ...}, path))")


BAD_TS = {
    "@problemName P\n@timeStamps true\n@classLabel true a\n@data\n(1,2):a\n":
        " uses @timeStamps true, which rnnlab does not read; expected values without time stamps",
    "@problemName P\n@targetLabel true\n@data\n1,2:0.5\n":
        " is a regression problem (@targetLabel true); expected class labels (@classLabel true ...)",
    "@problemName P\n@classLabel false\n@data\n1,2\n":
        " has no class labels (@classLabel false); expected @classLabel true <labels> in the header",
    "@problemName P\n@classLabel true a b\n@data\n1,2:a\n1,2:c\n":
        ", line 5: class label 'c' is not one of the header's @classLabel ['a', 'b']",
    "@problemName P\n@classLabel true a\n@data\n1,2:3,4:a\n1,2:a\n":
        ", line 5: 1 dimensions, expected 2; every case needs the same number of features",
    "@problemName P\n@classLabel true a\n@data\n1,2:3:a\n":
        ", line 4: its dimensions have different lengths ([1, 2]); expected one length per case",
    "@problemName P\n@classLabel true a\n@data\n1,x:a\n":
        ", line 4: could not convert string to float: 'x'; expected numbers, or ? for a missing value",
    "@problemName P\nseriesLength 3\n@data\n": ", line 2: expected a header line starting with '@' before @data, "
                                                 "got 'seriesLength 3'",
    "@problemName P\n@classLabel true a\n": " has no @data line; expected the .ts header, then @data, then one case "
                                             "per line",
    "@problemName P\n@classLabel true a\n@data\n# none\n": " holds no cases after @data",
}


@pytest.mark.parametrize("text", list(BAD_TS))
def test_every_unusable_ts_file_is_named_with_its_own_reason(text, tmp_path):
    path = tmp_path / "bad.ts"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_sequences(path, "data.path")
    assert str(raised.value) == f"data.path: {str(path)!r}" + BAD_TS[text]


def test_csv_columns_are_configurable_and_a_sequence_has_one_label(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("seq,step,a,b,noise,target\nx,0,1,2,9,up\nx,1,3,4,9,up\ny,0,5,6,9,down\n")
    data = read_sequences(path, "data.path", id_column="seq", label_column="target", feature_columns=["b", "a"],
                          time_column="step")
    np.testing.assert_array_equal(data.x, [[[2, 1], [4, 3]], [[6, 5], [0, 0]]])
    assert list(data.ids) == ["x", "y"] and list(data.labels) == ["up", "down"]
    path.write_text("id,a,label\nx,1,up\nx,2,down\n")
    with pytest.raises(ConfigError, match=re.escape(f"data.path: '{path}', line 3: sequence 'x' has label 'down' "
                                                    "here and 'up' at its first row; a sequence has one label")):
        read_sequences(path, "data.path")


def test_csv_sequences_come_in_order_of_first_appearance_with_their_steps_in_file_or_time_order(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("id,label,t,a\nb,1,2,20\na,0,1,10\nb,1,1,21\na,0,2,11\nb,1,3,22\n")
    by_file = read_sequences(path, "data.path", feature_columns=["a"])
    assert list(by_file.ids) == ["b", "a"] and list(by_file.lengths) == [3, 2]
    assert by_file.x[:, :, 0].tolist() == [[20, 21, 22], [10, 11, 0]]
    assert by_file.where == ["sequence 'b' (line 2)", "sequence 'a' (line 3)"]
    assert list(by_file.labels) == [1, 0] and by_file.labels.dtype.kind == "i"
    by_time = read_sequences(path, "data.path", time_column="t")
    assert by_time.x[:, :, 0].tolist() == [[21, 20, 22], [10, 11, 0]]  # t is not a feature
    assert by_time.where == ["sequence 'b' (line 4)", "sequence 'a' (line 3)"]  # each one's first step
    unlabelled = tmp_path / "predict.csv"
    unlabelled.write_text("id,a\nq,1\nq,2\n")
    data = read_sequences(unlabelled, "data.predict_path", labels_required=False)
    assert data.labels is None and data.x[:, :, 0].tolist() == [[1, 2]]
    unlabelled.write_text("id,label,a\nq,,1\nq,,2\n")  # the training file's columns, the labels left empty
    data = read_sequences(unlabelled, "data.predict_path", labels_required=False)
    assert data.labels is None and data.x[:, :, 0].tolist() == [[1, 2]]


def test_labels_of_any_kind_become_class_indices_in_sorted_order(tmp_path):
    sequences, _ = make_sequences(30)
    for labels, names in [([7, 5, 6] * 10, [5, 6, 7]), (["b", "c", "a"] * 10, ["a", "b", "c"])]:
        path = write_sequences(tmp_path / "train", sequences, labels, "npz")
        data = SequenceFileDataModule(str(path), val_fraction=0.2, test_fraction=0.2)
        data.setup("fit")
        assert data.class_names == names
        assert data.model_settings() == {"net.input_size": 3, "net.num_classes": 3, "class_names": names}
        train = data.files["train"]
        y = data.splits["train"].tensors[1]
        assert [names[i] for i in y.tolist()] == list(train.labels)


def test_held_out_splits_are_stratified_seeded_and_replaced_by_their_own_files(tmp_path):
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert len(held) == 20 and sorted(np.bincount(labels[held])) == [2, 6, 12]
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    assert np.array_equal(stratified_split(labels, 0.2, seed=0)[1], held)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], held)

    sequences, names = make_sequences(50)
    train = write_sequences(tmp_path / "train", sequences, names, "npz")
    val = write_sequences(tmp_path / "val", *make_sequences(8, seed=1), "npz")
    data = SequenceFileDataModule(str(train), val_path=str(val), test_fraction=0.2)
    data.setup("fit")
    assert {split: len(d) for split, d in data.splits.items()} == {"test": 10, "train": 40, "val": 8}


def test_standardisation_is_fitted_on_the_training_splits_valid_steps_and_applied_to_every_split(tmp_path):
    sequences, labels = make_sequences(40)
    test_sequences, test_labels = make_sequences(10, seed=2)
    train = write_sequences(tmp_path / "train", sequences, labels, "npz")
    test = write_sequences(tmp_path / "test", test_sequences, test_labels, "npz")
    data = SequenceFileDataModule(str(train), test_path=str(test), val_fraction=0.25)
    data.setup("fit")
    steps = np.concatenate([sequences[i] for i in data.files["train"].ids])  # valid steps only: no padding
    np.testing.assert_allclose(data.mean, steps.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.std, steps.std(0), rtol=1e-6)
    x, _, lengths = data.splits["test"].tensors
    expected = (test_sequences[3] - steps.mean(0)) / steps.std(0)
    np.testing.assert_allclose(x[3, : lengths[3]].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (x[3, lengths[3]:] == 0).all()  # padding stays zero

    raw = SequenceFileDataModule(str(train), test_path=str(test), val_fraction=0.25, standardize=False)
    raw.setup("fit")
    np.testing.assert_array_equal(raw.splits["test"].tensors[0][3, : lengths[3]].numpy(), test_sequences[3])


def test_a_restored_state_reads_a_test_file_without_the_training_file(tmp_path):
    """What eval and predict do: the state learnt in training, then only the file they are given."""
    train = write_sequences(tmp_path / "train", *make_sequences(40), "csv")
    test = write_sequences(tmp_path / "test", *make_sequences(12, seed=3), "csv")
    fitted = SequenceFileDataModule(str(train), test_path=str(test))
    fitted.setup("fit")
    train.unlink()
    restored = SequenceFileDataModule(str(train), test_path=str(test))
    restored.load_state_dict(fitted.state_dict())
    restored.setup("test")
    for a, b in zip(restored.splits["test"].tensors, fitted.splits["test"].tensors):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="which does not exist"):  # without the state it needs the training file
        SequenceFileDataModule(str(train), test_path=str(test)).setup("test")


def bad_file(kind, tmp_path):
    """(path of the training file, test file or None, the data module's extra arguments)."""
    sequences, labels = make_sequences(30)
    x, lengths = padded(sequences)
    train = tmp_path / "train.npz"
    if kind == "missing":
        return tmp_path / "nothing.npz", None
    if kind == "unknown_extension":
        (tmp_path / "train.parquet").write_bytes(b"PAR1")
        return tmp_path / "train.parquet", None
    if kind == "empty":
        train.write_bytes(b"")
    elif kind == "not_an_archive":
        train.write_bytes(b"this is not a zip archive")
    elif kind == "no_y":
        np.savez(train, x=x, lengths=lengths)
    elif kind == "no_x":
        np.savez(train, inputs=x, y=np.array(labels))
    elif kind == "feature_sizes":
        sequences[4] = np.zeros((5, 2), dtype=np.float32)
        torch.save({"x": [torch.from_numpy(s) for s in sequences], "y": labels}, tmp_path / "train.pt")
        return tmp_path / "train.pt", None
    elif kind == "length_0":
        lengths[7] = 0
        np.savez(train, x=x, y=np.array(labels), lengths=lengths)
    elif kind in ("nan", "inf"):
        x[2, 1, 0] = np.nan if kind == "nan" else np.inf
        np.savez(train, x=x, y=np.array(labels), lengths=lengths)
    elif kind == "unseen_label":
        write_sequences(train, sequences, labels, "npz")
        test = write_sequences(tmp_path / "test", sequences[:3], ["walk", "swim", "run"], "npz")
        return train, test
    elif kind == "too_small":
        write_sequences(train, sequences[:2], labels[:2], "npz")
    elif kind == "csv_without_label":
        (tmp_path / "train.csv").write_text("id,a\nx,1\n")
        return tmp_path / "train.csv", None
    elif kind.startswith("csv_"):
        rows = {"csv_not_a_number": "s1,up,1\ns2,down,oops\n", "csv_no_id": "s1,up,1\n,down,2\n",
                "csv_two_labels": "s1,up,1\ns2,down,2\ns1,down,3\n", "csv_no_label_value": "s1,up,1\ns2,down,2\ns1,,3\n"}
        (tmp_path / "train.csv").write_text("id,label,a\n" + rows[kind])
        return tmp_path / "train.csv", None
    return train, None


BAD_FILES = {
    "missing": "data.path: expected a sequence file (.npz, .pt, .csv, .ts), got '{dir}/nothing.npz', which does not "
               "exist",
    "unknown_extension": "data.path: expected a file ending in .npz, .pt, .csv, .ts, got '{dir}/train.parquet'",
    "empty": "data.path: expected a sequence file (.npz, .pt, .csv, .ts), got '{dir}/train.npz', which is empty",
    "not_an_archive": "data.path: '{dir}/train.npz' is not a readable .npz file",
    "no_y": "data.path: '{dir}/train.npz' has no 'y' array; expected x (N, T, D) and y (N,), and optionally lengths "
            "(N,); it holds ['lengths', 'x']",
    "no_x": "data.path: '{dir}/train.npz' has no 'x' array; expected x (N, T, D) and y (N,), and optionally lengths "
            "(N,); it holds ['inputs', 'y']",
    "feature_sizes": "data.path: '{dir}/train.pt': sequence 4 has 2 features, sequence 0 has 3; every sequence needs "
                     "the same number of features",
    "length_0": "data.path: '{dir}/train.npz': sequence 7 has length 0; every sequence needs at least one step",
    "nan": "data.path: '{dir}/train.npz': sequence 2 has nan at step 1, feature 0; expected finite values "
           "(fill or drop missing values first)",
    "inf": "data.path: '{dir}/train.npz': sequence 2 has inf at step 1, feature 0; expected finite values "
           "(fill or drop missing values first)",
    "unseen_label": "data.test_path: '{dir}/test.npz': sequence 1 has label 'swim', which the training data never "
                    "has; the model knows 3 classes: 'run', 'sit', 'walk'",
    "too_small": "data.test_fraction: '{dir}/train.npz' has 2 sequences, too few to hold out 0.1 of them for test "
                 "(0 held out, 2 left); give data.test_path, or a larger file",
    "csv_without_label": "data.path: '{dir}/train.csv' has no column 'label'; its columns are ['id', 'a'] (set "
                         "data.id_column, data.label_column, data.feature_columns or data.time_column)",
    "csv_not_a_number": "data.path: '{dir}/train.csv', line 3: feature column 'a' holds 'oops', not a number",
    "csv_no_id": "data.path: '{dir}/train.csv', line 3: no sequence id in column 'id'",
    "csv_two_labels": "data.path: '{dir}/train.csv', line 4: sequence 's1' has label 'down' here and 'up' at its "
                      "first row; a sequence has one label",
    "csv_no_label_value": "data.path: '{dir}/train.csv', line 4: sequence 's1' has no label in column 'label'",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_unusable_sequence_file_is_named_with_its_own_reason(kind, tmp_path):
    train, test = bad_file(kind, tmp_path)
    data = SequenceFileDataModule(str(train), test_path=None if test is None else str(test))
    with pytest.raises(ConfigError) as raised:
        data.setup("fit")
    assert str(raised.value).startswith(BAD_FILES[kind].format(dir=tmp_path)), str(raised.value)
