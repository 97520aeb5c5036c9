"""Token tagging on CoNLL files (part-of-speech tagging, chunking, named entities): ``data=conll``.

    python scripts/train.py model=tagger data=conll data.path=train.conllu data.test_path=test.conllu

Two formats, one token per line and a blank line after each sentence:

- CoNLL-U (``.conllu``, Universal Dependencies), read with the ``conllu`` package: the tag
  is the field ``tag_field`` (``upos`` by default; ``xpos``, ``deprel``...), the token is
  ``form``; multiword-token ranges (``1-2``) and empty nodes (``8.1``) are skipped.
- the column format of CoNLL-2000/2003 (any other extension): whitespace-separated
  columns, the token first and the tag in the last column (``tag_column``); ``-DOCSTART-``
  lines are skipped.

The model reads token ids: the vocabulary is built from the training split (tokens seen at
least ``min_freq`` times; id 0 pads, id 1 is every other token), and it and the tag names
(the sorted distinct tags of the training split) are the module's state, kept in every
checkpoint. Sentences are split into held-out parts at random (seeded) when no
``val_path`` / ``test_path`` is given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import checks
from ..errors import ConfigError
from .batching import PaddedBatchDataset
from .files import FileSplitsDataModule, check_folds, checked_files
from .sequence_files import check_file
from .tagging import PAD_TAG

PAD, UNKNOWN = "<pad>", "<unk>"  # token ids 0 and 1


@dataclass
class Sentences:
    """Tagged sentences read from one file: ``tokens[i]`` and ``tags[i]`` (None for a file
    without tags) are sentence i's lists; ``where[i]`` names it in errors (file line)."""

    tokens: list[list[str]]
    tags: list[list[str]] | None
    where: list[str]
    path: Path
    key: str
    tag_lines: list[list[int]] | None = field(default=None, repr=False)  # each tag's line number, for errors

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, index: np.ndarray) -> "Sentences":
        pick = [int(i) for i in index]
        return Sentences([self.tokens[i] for i in pick], None if self.tags is None else [self.tags[i] for i in pick],
                         [self.where[i] for i in pick], self.path, self.key,
                         None if self.tag_lines is None else [self.tag_lines[i] for i in pick])


def read_conll(path, key: str, tag_field: str = "upos", tag_column: int = -1,
               labels_required: bool = True) -> Sentences:
    """Read ``path`` (the value of config key ``key``): CoNLL-U for ``.conllu``, else the
    column format. Tags are required unless ``labels_required`` is False."""
    path = check_file(path, key, "a CoNLL file (.conllu, or token-per-line columns)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(key, f"{str(path)!r} is not a UTF-8 text file (byte offset {err.start})") from None
    if path.suffix.lower() == ".conllu":
        sentences = _read_conllu(text, path, key, tag_field, labels_required)
    else:
        sentences = _read_columns(text, path, key, tag_column, labels_required)
    if not sentences.tokens:
        raise ConfigError(key, f"{str(path)!r} holds no sentences")
    return sentences


def _read_columns(text: str, path: Path, key: str, tag_column: int, labels_required: bool) -> Sentences:
    tokens, tags, lines, where = [], [], [], []
    sentence: list[str] = []
    sentence_tags: list[str | None] = []
    sentence_lines: list[int] = []

    def end_sentence():
        if sentence:
            tokens.append(list(sentence))
            tags.append(list(sentence_tags))
            lines.append(list(sentence_lines))
            where.append(f"line {sentence_lines[0]}")
        sentence.clear(), sentence_tags.clear(), sentence_lines.clear()

    for number, line in enumerate(text.splitlines(), 1):
        columns = line.split()
        if not columns:
            end_sentence()
            continue
        if columns[0] == "-DOCSTART-":
            end_sentence()
            continue
        if len(columns) < 2:
            if labels_required:
                raise ConfigError(key, f"{str(path)!r}, line {number}: {line.strip()!r} has no tag column; expected "
                                       "the token, then the tag in the last column")
            sentence_tags.append(None)
        else:
            try:
                sentence_tags.append(columns[tag_column])
            except IndexError:
                raise ConfigError(key, f"{str(path)!r}, line {number}: no column {tag_column} (data.tag_column) in "
                                       f"{len(columns)} columns") from None
        sentence.append(columns[0])
        sentence_lines.append(number)
    end_sentence()
    return _with_tags(tokens, tags, lines, where, path, key)


def _read_conllu(text: str, path: Path, key: str, tag_field: str, labels_required: bool) -> Sentences:
    import conllu

    try:
        parsed = conllu.parse(text)
    except conllu.exceptions.ParseException as err:
        raise ConfigError(key, f"{str(path)!r} is not valid CoNLL-U ({' '.join(str(err).split())})") from None
    tokens, tags, lines, where = [], [], [], []
    for number, sentence in enumerate(parsed, 1):
        words = [t for t in sentence if isinstance(t["id"], int)]  # not ranges (1-2) or empty nodes (8.1)
        if not words:
            continue
        name = sentence.metadata.get("sent_id")
        label = f"sentence {number}" + (f" (sent_id {name})" if name else "")
        sentence_tags = []
        for position, word in enumerate(words, 1):
            if tag_field not in word:
                raise ConfigError(key, f"{str(path)!r}: no field {tag_field!r} (data.tag_field); CoNLL-U fields "
                                       f"are {list(word.keys())}")
            tag = None if word[tag_field] in (None, "_") else word[tag_field]  # _ is CoNLL-U's empty field
            if tag is None and labels_required:
                raise ConfigError(key, f"{str(path)!r}, {label}, word {position} ({word['form']!r}): no "
                                       f"{tag_field} tag (_)")
            sentence_tags.append(None if tag is None else str(tag))
        tokens.append([str(w["form"]) for w in words])
        tags.append(sentence_tags)
        lines.append([0] * len(words))
        where.append(label)
    return _with_tags(tokens, tags, lines, where, path, key)


def _with_tags(tokens, tags, lines, where, path: Path, key: str) -> Sentences:
    """Sentences whose tags are None when the file has no tags at all."""
    if all(tag is None for sentence in tags for tag in sentence):
        return Sentences(tokens, None, where, path, key)
    for i, sentence in enumerate(tags):
        if None in sentence:
            position = sentence.index(None)
            at = f"line {lines[i][position]}" if lines[i][position] else f"{where[i]}, word {position + 1}"
            raise ConfigError(key, f"{str(path)!r}, {at}: {tokens[i][position]!r} has no tag, while other tokens "
                                   "of the file have one")
    return Sentences(tokens, tags, where, path, key, lines)


class ConllDataModule(FileSplitsDataModule):
    """Tagged sentences from CoNLL files, as token ids, for the taggers (module docstring).

    Batches: ``(ids (B, T) int64, tags (B, T) int64, lengths (B,) int64)``, tags -100 past
    each sentence's length, each batch cut to its longest sentence.

    Args:
        path: the training file.
        val_path, test_path: their own files; None holds out ``val_fraction`` /
            ``test_fraction`` of the training file's sentences.
        predict_path: a file to tag (tags optional), for ``scripts/predict.py``.
        val_fraction, test_fraction: in (0, 1).
        tag_field: the CoNLL-U field to predict (``upos``, ``xpos``, ``deprel``...).
        tag_column: the column of the tag in the column format (-1: the last).
        min_freq: tokens seen fewer times in the training split are unknown (id 1).
        lowercase: lowercase every token before looking it up.
        batch_size: sentences per batch.
        seed: seed of the held-out splits and folds.
        num_folds, fold: k-fold cross-validation: the validation split is fold ``fold``
            (0 to ``num_folds`` - 1) of the training file after the test split; None: ``val_fraction``.
        num_workers: DataLoader worker processes.
    """

    RECORDS = "sentences"

    def __init__(self, path: str, val_path: str | None = None, test_path: str | None = None,
                 predict_path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 tag_field: str = "upos", tag_column: int = -1, min_freq: int = 2, lowercase: bool = False,
                 batch_size: int = 32, seed: int = 0, num_workers: int = 0,
                 num_folds: int | None = None, fold: int | None = None):  # pragma: no mutate block
        super().__init__()
        path, val_path, test_path, predict_path = checked_files(path, val_path, test_path, predict_path,
                                                                val_fraction, test_fraction)
        check_folds(num_folds, fold, val_path)
        checks.positive_int("min_freq", min_freq)
        checks.positive_int("batch_size", batch_size)
        if not checks.is_int(tag_column):
            raise checks.ArgumentTypeError("tag_column", f"expected tag_column to be an int, got {tag_column!r}")
        self.save_hyperparameters(logger=False)  # the run logs data.* itself (rnnlab.train.flat_hparams)
        self.vocab: list[str] | None = None
        self.tag_names: list[str] | None = None

    def state_dict(self) -> dict:
        """The vocabulary and the tag names; Lightning saves them in every checkpoint."""
        return {"vocab": self.vocab, "tag_names": self.tag_names}

    def load_state_dict(self, state: dict) -> None:
        self.vocab, self.tag_names = state["vocab"], state["tag_names"]

    def model_settings(self) -> dict:
        """The tagger's vocabulary and tag sizes, and the tag names."""
        if self.vocab is None:
            raise RuntimeError("the data is read in setup(); call datamodule.setup() first")
        return {"net.vocab_size": len(self.vocab), "net.num_tags": len(self.tag_names),
                "tag_names": list(self.tag_names)}

    def read(self, key: str, labels_required: bool = True) -> Sentences:
        hp = self.hparams
        return read_conll(hp[key], f"data.{key}", hp.tag_field, hp.tag_column, labels_required)

    def is_fitted(self) -> bool:
        return self.vocab is not None

    def normal(self, token: str) -> str:
        return token.lower() if self.hparams.lowercase else token

    def fit(self, train: Sentences) -> None:
        """The vocabulary and the tag names, from the training split."""
        counts = Counter(self.normal(token) for sentence in train.tokens for token in sentence)
        self.vocab = [PAD, UNKNOWN] + sorted(t for t, n in counts.items() if n >= self.hparams.min_freq
                                             and t not in (PAD, UNKNOWN))
        self.tag_names = sorted({tag for sentence in train.tags for tag in sentence})

    def dataset(self, data: Sentences) -> PaddedBatchDataset:
        lengths = torch.tensor([len(s) for s in data.tokens], dtype=torch.int64)  # (N,)
        rows = torch.repeat_interleave(torch.arange(len(data)), lengths)  # each token's sentence
        starts = torch.cumsum(lengths, 0) - lengths  # (N,)
        cols = torch.arange(len(rows)) - starts[rows]  # each token's position in its sentence
        stoi = {token: i for i, token in enumerate(self.vocab)}
        ids = torch.zeros(len(data), int(lengths.max()), dtype=torch.int64)  # (N, T_max), 0 = padding
        ids[rows, cols] = torch.tensor([stoi.get(self.normal(t), 1) for s in data.tokens for t in s])
        tags = torch.full(ids.shape, PAD_TAG, dtype=torch.int64)  # (N, T_max)
        if data.tags is not None:
            tag_index = {tag: i for i, tag in enumerate(self.tag_names)}
            known = torch.tensor([tag_index.get(tag, -1) for s in data.tags for tag in s])
            if (known < 0).any():
                flat = int(torch.nonzero(known < 0)[0])
                i, position = int(rows[flat]), int(cols[flat])
                line = data.tag_lines[i][position] if data.tag_lines else 0
                at = f"line {line}" if line else f"{data.where[i]}, word {position + 1}"
                raise ConfigError(data.key, f"{str(data.path)!r}, {at}: tag {data.tags[i][position]!r}, which the "
                                            f"training data never has; the model knows {len(self.tag_names)} tags: "
                                            + ", ".join(self.tag_names[:30]) + (", ..." if len(self.tag_names) > 30
                                                                                else ""))
            tags[rows, cols] = known
        return PaddedBatchDataset(ids, tags, lengths, time_dims=(True, True, False))
