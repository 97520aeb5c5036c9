"""Reading labelled sequences from files: NumPy ``.npz``, PyTorch ``.pt``, long-format CSV and
the UEA/UCR ``.ts`` format of the time-series-classification archives.

Every reader returns :class:`SequenceFile`: the sequences padded into one array, their
lengths, their labels as they appear in the file (ints or strings, or None when the file
has none) and an id per sequence. A file that cannot be used is refused with one
:class:`~rnnlab.errors.ConfigError` naming the config key, the file and the sequence, row
or line at fault.

The formats, chosen by extension:

- ``.npz`` (``numpy.savez``): ``x`` (N, T, D) float, padded past each length (or (N, T) for
  one feature); ``y`` (N,) ints or strings; optional ``lengths`` (N,) ints (default: all T).
- ``.pt`` (``torch.save`` of a dict): ``x`` a (N, T, D) tensor (with optional ``lengths``)
  or a list of (T_i, D) tensors; ``y`` a (N,) tensor or a list of ints or strings. Read with
  ``torch.load(weights_only=True)``: a file that holds anything else is refused.
- ``.csv`` in long format: one row per time step, a sequence id column, feature columns and
  a label column (names configurable); a sequence's rows are its steps in file order, or
  ordered by a time column. Read with pandas.
- ``.ts``: the header (``@problemName``, ``@univariate``, ``@dimensions``,
  ``@equalLength``, ``@classLabel true <labels>``, ...) then ``@data``, one case per line:
  each dimension's comma-separated values, dimensions separated by ``:``, the class label
  last; ``?`` is a missing value. Read by :func:`read_ts` (the parsers that exist come
  with large packages such as sktime and aeon, so rnnlab reads the format itself).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

EXTENSIONS = (".npz", ".pt", ".csv", ".ts")


@dataclass
class SequenceFile:
    """Sequences read from one file.

    x: (N, T_max, D) float32, zero past each sequence's length.
    lengths: (N,) int64, each >= 1.
    labels: (N,) the labels as the file holds them (ints or strings), or None.
    ids: (N,) each sequence's id: the CSV id column's value, else its index in the file.
    path, key: the file, and the config key that named it (for errors).
    where: how to name sequence i in an error (``"sequence 3"``, ``"line 12"``...).
    """

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray
    path: Path
    key: str = ""
    where: list[str] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def name(self, i: int) -> str:
        """Sequence ``i`` as an error names it."""
        if self.where is not None:
            return self.where[i]
        return f"sequence {i}"

    def subset(self, index: np.ndarray) -> "SequenceFile":
        where = None if self.where is None else [self.where[i] for i in index]
        labels = None if self.labels is None else self.labels[index]
        longest = int(self.lengths[index].max()) if len(index) else 0
        return SequenceFile(self.x[index, :longest], self.lengths[index], labels, self.ids[index], self.path, self.key,
                            where)


def read_sequences(path, key: str, id_column: str = "id", label_column: str = "label",
                   feature_columns: list[str] | None = None, time_column: str | None = None,
                   labels_required: bool = True) -> SequenceFile:
    """Read the sequence file ``path`` (the value of config key ``key``), by its extension.

    Labels are required unless ``labels_required`` is False (files to predict on); the
    column arguments apply to CSV files. Every sequence must have at least one step, the
    same number of features and only finite values within its length.
    """
    path = check_file(path, key, "a sequence file (" + ", ".join(EXTENSIONS) + ")")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(key, f"expected a file ending in {', '.join(EXTENSIONS)}, got {str(path)!r}")
    if suffix == ".npz":
        data = read_npz(path, key, labels_required)
    elif suffix == ".pt":
        data = read_pt(path, key, labels_required)
    elif suffix == ".csv":
        data = read_csv(path, key, id_column, label_column, feature_columns, time_column, labels_required)
    else:
        data = read_ts(path, key, labels_required)
    data.key = key
    check_values(data, key)
    return data


def check_file(path, key: str, expected: str) -> Path:
    """``path`` as a Path, refused unless it is an existing, readable, non-empty file."""
    if path is None:
        raise ConfigError(key, f"expected {expected}, got no value")
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ConfigError(key, f"expected {expected}, got {str(path)!r}, which does not exist")
    if path.is_dir():
        raise ConfigError(key, f"expected {expected}, got {str(path)!r}, which is a directory")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise ConfigError(key, f"expected {expected}, got {str(path)!r}, which cannot be read "
                               f"({err.strerror or err})") from None
    if empty:
        raise ConfigError(key, f"expected {expected}, got {str(path)!r}, which is empty")
    return path


def check_values(data: SequenceFile, key: str) -> None:
    """Refuse sequences of length 0 and NaN or infinite values within a sequence's length."""
    where = f"{str(data.path)!r}"
    if len(data) == 0:
        raise ConfigError(key, f"{where} holds no sequences")
    empty = np.flatnonzero(data.lengths < 1)
    if len(empty):
        raise ConfigError(key, f"{where}: {data.name(int(empty[0]))} has length {int(data.lengths[empty[0]])}; "
                               "every sequence needs at least one step")
    if data.x.shape[1] < int(data.lengths.max()):
        i = int(np.argmax(data.lengths))
        raise ConfigError(key, f"{where}: {data.name(i)} has length {int(data.lengths[i])}, longer than its "
                               f"{data.x.shape[1]} stored steps")
    valid = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    bad = ~np.isfinite(data.x) & valid[:, :, None]  # (N, T, D)
    if bad.any():
        i, t, d = (int(v) for v in np.argwhere(bad)[0])
        raise ConfigError(key, f"{where}: {data.name(i)} has {data.x[i, t, d]} at step {t}, feature {d}; "
                               "expected finite values (fill or drop missing values first)")
    if data.labels is not None and len(data.labels) != len(data):
        raise ConfigError(key, f"{where}: {len(data.labels)} labels for {len(data)} sequences")


def _label_array(values, key: str, path: Path, name: str = "y") -> np.ndarray:
    """Labels as a 1-D array of ints or of strings."""
    labels = np.asarray(values)
    if labels.ndim != 1:
        raise ConfigError(key, f"{str(path)!r}: expected {name} of shape (N,), got {tuple(labels.shape)}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ConfigError(key, f"{str(path)!r}: expected {name} to hold class labels (ints or strings), "
                                   "got fractional or missing values")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind in "iub":
        labels = labels.astype(np.int64)
    elif labels.dtype.kind in "US":
        labels = labels.astype(str)
    elif labels.dtype.kind == "O" and all(isinstance(v, str) for v in labels):
        labels = labels.astype(str)
    else:
        raise ConfigError(key, f"{str(path)!r}: expected {name} to hold class labels (ints or strings), "
                               f"got {labels.dtype}")
    return labels


def _padded(x, key: str, path: Path, name: str) -> np.ndarray:
    """A padded (N, T, D) float32 array from an (N, T, D) or (N, T) numeric array."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ConfigError(key, f"{str(path)!r}: expected {name} of numbers, got {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]  # (N, T) -> (N, T, 1): one feature
    if x.ndim != 3:
        raise ConfigError(key, f"{str(path)!r}: expected {name} of shape (N, T, D), got {tuple(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _lengths(lengths, n: int, steps: int, key: str, path: Path) -> np.ndarray:
    if lengths is None:
        return np.full(n, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise ConfigError(key, f"{str(path)!r}: expected lengths of shape ({n},) ints, got "
                               f"{tuple(lengths.shape)} {lengths.dtype}")
    return lengths.astype(np.int64)


def _zero_padding(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (N, T)
    return np.where(valid[:, :, None], x, np.float32(0))


def read_npz(path: Path, key: str, labels_required: bool) -> SequenceFile:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        if "Object arrays" in str(err):  # a NumPy archive whose arrays hold pickled Python objects
            raise ConfigError(key, f"{str(path)!r} stores Python objects; save x, y and lengths as numeric or "
                                   "string arrays (np.savez(path, x=..., y=np.array(labels)))") from None
        raise ConfigError(key, f"{str(path)!r} is not a readable .npz file (not a NumPy archive)") from None
    except (OSError, EOFError) as err:
        raise ConfigError(key, f"{str(path)!r} is not a readable .npz file ({err})") from None
    missing = [name for name in ("x", "y") if name not in arrays and (name == "x" or labels_required)]
    if missing:
        raise ConfigError(key, f"{str(path)!r} has no {' or '.join(repr(m) for m in missing)} array; expected x "
                               f"(N, T, D) and y (N,), and optionally lengths (N,); it holds {sorted(arrays)}")
    x = _padded(arrays["x"], key, path, "x")
    lengths = _lengths(arrays.get("lengths"), len(x), x.shape[1], key, path)
    labels = _label_array(arrays["y"], key, path) if "y" in arrays else None
    return SequenceFile(_zero_padding(x, lengths), lengths, labels, np.arange(len(x)), path)


def read_pt(path: Path, key: str, labels_required: bool) -> SequenceFile:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the refused class on a line with GLOBAL ("Unsupported global: GLOBAL numpy...").
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a {refused.group(1)}" if refused else "objects torch.load(weights_only=True) refuses"
        raise ConfigError(key, f"{str(path)!r} holds {what}; expected tensors, lists of tensors and lists of ints "
                               "or strings (torch.save({'x': ..., 'y': ...}, path))") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(key, f"{str(path)!r} is not a readable .pt file ({type(err).__name__})") from None
    if not isinstance(data, dict) or "x" not in data or ("y" not in data and labels_required):
        got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(key, f"{str(path)!r}: expected a dict with x (an (N, T, D) tensor or a list of (T_i, D) "
                               f"tensors) and y (N,), got {got}")
    x = data["x"]
    if isinstance(x, torch.Tensor):
        x = _padded(x.numpy(), key, path, "x")
        lengths = data.get("lengths")
        lengths = _lengths(None if lengths is None else torch.as_tensor(lengths).numpy(), len(x), x.shape[1], key,
                           path)
        x = _zero_padding(x, lengths)
    elif isinstance(x, (list, tuple)):
        x, lengths = _pad_list(x, key, path)
    else:
        raise ConfigError(key, f"{str(path)!r}: expected x to be a tensor or a list of tensors, "
                               f"got {type(x).__name__}")
    labels = None
    if "y" in data:
        y = data["y"]
        labels = _label_array(y.numpy() if isinstance(y, torch.Tensor) else list(y), key, path)
    return SequenceFile(x, lengths, labels, np.arange(len(x)), path)


def _pad_list(sequences, key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A list of (T_i, D) (or (T_i,)) tensors as (N, T_max, D) zero-padded and (N,) lengths."""
    arrays = []
    for i, seq in enumerate(sequences):
        if not isinstance(seq, torch.Tensor) or seq.dim() not in (1, 2) or seq.is_complex():
            got = f"{tuple(seq.shape)} tensor" if isinstance(seq, torch.Tensor) else type(seq).__name__
            raise ConfigError(key, f"{str(path)!r}: sequence {i} is a {got}; expected a (T, D) tensor")
        arrays.append(seq.reshape(len(seq), -1).to(torch.float32).numpy())  # (T_i, D)
    if not arrays:
        raise ConfigError(key, f"{str(path)!r} holds no sequences")
    sizes = np.array([a.shape[1] for a in arrays])
    if (sizes != sizes[0]).any():
        i = int(np.flatnonzero(sizes != sizes[0])[0])
        raise ConfigError(key, f"{str(path)!r}: sequence {i} has {sizes[i]} features, sequence 0 has {sizes[0]}; "
                               "every sequence needs the same number of features")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    x = np.zeros((len(arrays), max(int(lengths.max()), 1), int(sizes[0])), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = a
    return x, lengths


def read_csv(path: Path, key: str, id_column: str, label_column: str, feature_columns: list[str] | None,
             time_column: str | None, labels_required: bool) -> SequenceFile:
    """Long format: one row per time step. Vectorised: rows are grouped by sequence id with
    one stable sort and scattered into the padded array in one assignment."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(key, f"{str(path)!r} is not a readable CSV file "
                               f"({' '.join(str(err).split())})") from None
    columns = [str(c) for c in frame.columns]
    has_labels = label_column in columns
    needed = [id_column] + ([label_column] if labels_required else []) + ([time_column] if time_column else [])
    missing = [c for c in needed + list(feature_columns or []) if c not in columns]
    if missing:
        raise ConfigError(key, f"{str(path)!r} has no column {', '.join(repr(c) for c in missing)}; its columns are "
                               f"{columns} (set data.id_column, data.label_column, data.feature_columns or "
                               "data.time_column)")
    if feature_columns is None:
        feature_columns = [c for c in columns if c not in (id_column, label_column, time_column)]
    if not feature_columns:
        raise ConfigError(key, f"{str(path)!r} has no feature columns besides {id_column!r} and {label_column!r}")
    if len(frame) == 0:
        raise ConfigError(key, f"{str(path)!r} holds no rows")
    features = frame[list(feature_columns)]
    not_numeric = [c for c in feature_columns if not pd.api.types.is_numeric_dtype(features[c])]
    if not_numeric:
        column = not_numeric[0]
        numbers = pd.to_numeric(features[column], errors="coerce")
        row = int(np.flatnonzero(numbers.isna() & features[column].notna())[0])
        raise ConfigError(key, f"{str(path)!r}, line {row + 2}: feature column {column!r} holds "
                               f"{features[column].iloc[row]!r}, not a number")
    codes, ids = pd.factorize(frame[id_column], sort=False)  # sequences in order of first appearance
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ConfigError(key, f"{str(path)!r}, line {row + 2}: no sequence id in column {id_column!r}")
    order = (np.lexsort((frame[time_column].to_numpy(), codes)) if time_column
             else np.argsort(codes, kind="stable"))  # rows grouped by sequence, in time (or file) order
    codes_sorted = codes[order]
    lengths = np.bincount(codes_sorted, minlength=len(ids)).astype(np.int64)  # (N,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (N,)
    steps = np.arange(len(order)) - starts[codes_sorted]  # each row's step within its sequence
    x = np.zeros((len(ids), int(lengths.max()), len(feature_columns)), dtype=np.float32)  # (N, T_max, D)
    x[codes_sorted, steps] = features.to_numpy(dtype=np.float32)[order]
    where = [f"sequence {seq_id!r} (line {int(order[s]) + 2})" for seq_id, s in zip(ids, starts)]
    column = frame[label_column].to_numpy()[order] if has_labels else None
    if column is not None and not labels_required and pd.isna(column).all():
        column = None  # a file to predict with the training file's columns, its labels left empty
    labels = None
    if column is not None:
        missing = np.flatnonzero(pd.isna(column))  # (an empty cell: NaN, which differs even from itself)
        if len(missing):
            row = int(missing[0])
            raise ConfigError(key, f"{str(path)!r}, line {int(order[row]) + 2}: sequence {ids[codes_sorted[row]]!r} "
                                   f"has no label in column {label_column!r}")
        first = column[starts]  # (N,) each sequence's label at its first row
        differs = np.flatnonzero(column != first[codes_sorted])
        if len(differs):
            row = int(differs[0])
            raise ConfigError(key, f"{str(path)!r}, line {int(order[row]) + 2}: sequence "
                                   f"{ids[codes_sorted[row]]!r} has label {column[row]!r} here and "
                                   f"{first[codes_sorted[row]]!r} at its first row; a sequence has one label")
        labels = _label_array(list(first) if first.dtype == object else first, key, path, label_column)
    return SequenceFile(x, lengths, labels, np.asarray(ids), path, where=where)


def read_ts(path: Path, key: str, labels_required: bool) -> SequenceFile:
    """The UEA/UCR ``.ts`` format (see the module docstring), classification problems."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(key, f"{str(path)!r} is not a UTF-8 text file (byte offset {err.start})") from None
    header: dict[str, str] = {}
    data_start = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            data_start = number
            break
        if not line.startswith("@"):
            raise ConfigError(key, f"{str(path)!r}, line {number}: expected a header line starting with '@' "
                                   f"before @data, got {line[:40]!r}")
        name, _, value = line[1:].partition(" ")
        header[name.lower()] = value.strip()
    if data_start is None:
        raise ConfigError(key, f"{str(path)!r} has no @data line; expected the .ts header, then @data, "
                               "then one case per line")
    if header.get("timestamps", "false").lower() == "true":
        raise ConfigError(key, f"{str(path)!r} uses @timeStamps true, which rnnlab does not read; "
                               "expected values without time stamps")
    if "targetlabel" in header and header["targetlabel"].split()[0].lower() == "true":
        raise ConfigError(key, f"{str(path)!r} is a regression problem (@targetLabel true); "
                               "expected class labels (@classLabel true ...)")
    class_label = header.get("classlabel", "false").split()
    has_labels = bool(class_label) and class_label[0].lower() == "true"
    if labels_required and not has_labels:
        raise ConfigError(key, f"{str(path)!r} has no class labels (@classLabel false); expected @classLabel "
                               "true <labels> in the header")
    declared = set(class_label[1:]) if has_labels else set()
    dims = int(header["dimensions"]) if header.get("dimensions", "").isdigit() else None

    sequences, labels, where = [], [], []
    for number in range(data_start + 1, len(lines) + 1):
        line = lines[number - 1].strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if has_labels:
            fields, label = fields[:-1], fields[-1].strip()
            if declared and label not in declared:
                raise ConfigError(key, f"{str(path)!r}, line {number}: class label {label!r} is not one of the "
                                       f"header's @classLabel {sorted(declared)}")
            labels.append(label)
        if dims is None:
            dims = len(fields)
        if len(fields) != dims:
            raise ConfigError(key, f"{str(path)!r}, line {number}: {len(fields)} dimensions, expected {dims}; "
                                   "every case needs the same number of features")
        counts = {field.count(",") + 1 if field.strip() else 0 for field in fields}
        if len(counts) != 1:
            raise ConfigError(key, f"{str(path)!r}, line {number}: its dimensions have different lengths "
                                   f"({sorted(counts)}); expected one length per case")
        text = ",".join(fields).replace("?", "nan")  # ? is a missing value (refused later, naming the line)
        try:
            values = np.array(text.split(","), dtype=np.float32) if counts != {0} else np.zeros(0, np.float32)
        except ValueError as err:
            raise ConfigError(key, f"{str(path)!r}, line {number}: {err}; expected numbers, or ? for a missing "
                                   "value") from None
        sequences.append(values.reshape(dims, -1).T)  # (T_i, D)
        where.append(f"line {number}")
    if not sequences:
        raise ConfigError(key, f"{str(path)!r} holds no cases after @data")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    x = np.zeros((len(sequences), max(int(lengths.max()), 1), dims), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    label_array = _ts_labels(labels) if has_labels else None
    return SequenceFile(x, lengths, label_array, np.arange(len(sequences)), path, where=where)


def _ts_labels(labels: list[str]) -> np.ndarray:
    """.ts labels are text; labels that are all integers are read as ints (1..9 stays 1..9)."""
    if all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return np.array([int(label) for label in labels], dtype=np.int64)
    return np.array(labels, dtype=str)
