"""Character corpora for language modelling: a user's text file, directory or glob of
text files, or a generated corpus.

The text is split contiguously into train/val/test (90/5/5 by default), so validation
measures how well the model continues unseen text, not memorised windows. Many files are
documents: joined with a separator (a blank line by default) and split contiguously like
one text, or, with ``split_by=documents``, dealt whole to the splits. The
vocabulary is the sorted set of characters in the training split; characters that
only occur in val/test map to U+FFFD, which is then added to the vocabulary. A sample
is a window of ``seq_len`` input ids and the same window shifted by one as targets.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .. import checks
from .batching import EpochSampler, batched_loader, overfitting, shard
from .files import absolute, check_folds, fold_ids
from .grammar import generate_grammar_corpus

UNKNOWN = "\ufffd"


def read_text_file(path: Path) -> str:
    """A file's text; a path that is not a non-empty UTF-8 text file gets its own clear error."""
    expected = "expected a UTF-8 text file"
    if not path.exists():
        raise FileNotFoundError(f"data.path: {expected}, got {str(path)!r}, which does not exist")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError("data.path", f"{expected}, got {str(path)!r}, which cannot be read "
                                       f"({err.strerror or err})") from None
    if not raw:
        raise ConfigError("data.path", f"{expected}, got {str(path)!r}, which is empty")
    if b"\x00" in raw:  # UTF-8 text never holds NUL bytes; binary files nearly always do
        raise ConfigError("data.path", f"{expected}, got {str(path)!r}, which is binary "
                                       f"(a NUL byte at offset {raw.index(0)})")
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as err:
        raise ConfigError("data.path", f"{expected}, got {str(path)!r}, which is not valid UTF-8 "
                                       f"(byte 0x{raw[err.start]:02x} at offset {err.start}); "
                                       "convert it first, e.g. iconv -f latin1 -t utf-8") from None


class CharWindows(Dataset):
    """Windows of a 1-D id tensor: item i starts at ``i * stride``.

    ``gather`` takes a batch of items and gathers them in one indexing operation: x (B, T)
    and y (B, T), y being x shifted one character ahead (``__getitem__``: one window, x (T,)
    and y (T,)).
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int):
        if len(ids) < seq_len + 1:
            raise ValueError(f"expected a text of at least seq_len + 1 = {seq_len + 1} characters, got {len(ids)}")
        self.ids, self.seq_len, self.stride = ids, seq_len, stride
        self.offsets = torch.arange(seq_len + 1)

    def __len__(self) -> int:
        return (len(self.ids) - self.seq_len - 1) // self.stride + 1

    def gather(self, items: list[int]):
        starts = torch.as_tensor(items).reshape(-1, 1) * self.stride  # (B, 1)
        window = self.ids[starts + self.offsets]  # (B, T + 1)
        return window[:, :-1], window[:, 1:]  # (B, T), (B, T)

    def __getitem__(self, item: int):
        x, y = self.gather([item])
        return x[0], y[0]  # (T,), (T,)


class StreamWindows(Dataset):
    """A text cut into ``batch_size`` contiguous streams; item k is window k of every stream.

    Row b of batch k continues row b of batch k - 1, which is what lets a model carry its
    hidden state across batches. Returns x (B, T) and y (B, T), y shifted by one; the last
    window is shorter where the streams do not divide into windows, so every character of a
    stream but its first is a target once (the ``len(ids) % batch_size`` characters left over
    after the streams are not read).
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int):
        stream_len = len(ids) // batch_size
        if stream_len < seq_len + 1:
            raise ValueError(f"data.stateful: a text of {len(ids)} characters makes {batch_size} streams of "
                             f"{stream_len}, shorter than seq_len + 1 = {seq_len + 1}")
        self.streams = ids[: stream_len * batch_size].view(batch_size, stream_len)  # (B, N / B)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return -(-(self.streams.shape[1] - 1) // self.seq_len)  # ceil((N / B - 1) / T)

    def __getitem__(self, k: int):
        if not 0 <= k < len(self):
            raise IndexError(f"window {k} of {len(self)}")
        start = k * self.seq_len
        window = self.streams[:, start:start + self.seq_len + 1]  # (B, T + 1), shorter at the end
        return window[:, :-1], window[:, 1:]


class CharDataModule(L.LightningDataModule):
    """Character windows from ``path`` (UTF-8 text) or, if ``path`` is None, a generated corpus.

    Args:
        path: a UTF-8 text file, e.g. ``../shared/data/tinyshakespeare.txt``, a directory (every
            file under it but hidden ones) or a glob (``'books/**/*.txt'``), made absolute (so a
            checkpoint's data config finds it from any directory); None uses the grammar
            corpus of :mod:`rnnlab.data.grammar`. Files are read in sorted order.
        corpus_chars: size of the generated corpus (ignored with ``path``).
        seq_len: characters per training window T.
        batch_size: windows per batch.
        splits: train/val/test fractions of the text, in order.
        train_windows: ``"random"`` draws window starts uniformly at any position each
            epoch; ``"strided"`` uses non-overlapping windows in shuffled order. (With
            ``trainer.overfit_batches``, training reads the first non-overlapping windows
            of the training text, in order, every epoch.)
        windows_per_epoch: training windows per epoch; None covers the training text
            once (len(train) // seq_len).
        seed: seed of the generated corpus.
        num_workers: DataLoader worker processes.
        stateful: read every split as ``batch_size`` contiguous streams, batch k holding
            window k of each stream, in order, so a model can carry its hidden state from
            one batch to the next (truncated BPTT; ``train_windows`` and
            ``windows_per_epoch`` then do not apply). Single-process only.
        split_by: with several files, ``"text"`` joins them and cuts the text contiguously
            (the last files become validation and test, in sorted order); ``"documents"``
            shuffles the files with ``seed`` and gives each split whole files, at least one,
            until it holds its fraction of the characters (no document is in two splits).
        document_separator: the text between two files (a blank line by default).
        num_folds, fold: k-fold cross-validation: the training and validation text
            together are cut into ``num_folds`` contiguous blocks (``split_by: text``) or
            their documents dealt to ``num_folds`` folds with ``seed`` (``documents``); block
            or fold ``fold`` is the validation text, the others joined (by
            ``document_separator``) the training text. The test text is the same for every
            fold. None: ``splits`` alone.
    """

    def __init__(self, path: str | None = None, corpus_chars: int = 300_000, seq_len: int = 128,
                 batch_size: int = 64, splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 train_windows: str = "random", windows_per_epoch: int | None = None,
                 seed: int = 0, num_workers: int = 0, stateful: bool = False, split_by: str = "text",
                 document_separator: str = "\n\n", num_folds: int | None = None,
                 fold: int | None = None):  # pragma: no mutate block
        super().__init__()
        for name in ("corpus_chars", "seq_len", "batch_size"):
            checks.positive_int(name, locals()[name])
        path = absolute("path", path)  # a glob keeps its pattern
        if windows_per_epoch is not None:
            checks.positive_int("windows_per_epoch", windows_per_epoch)
        if train_windows not in ("random", "strided"):
            raise checks.ArgumentError("train_windows", f"expected train_windows 'random' or 'strided', "
                                                         f"got {train_windows!r}")
        if split_by not in ("text", "documents"):
            raise checks.ArgumentError("split_by", f"expected split_by 'text' or 'documents', got {split_by!r}")
        if not isinstance(document_separator, str):
            raise checks.ArgumentTypeError("document_separator", f"expected document_separator to be text, got "
                                                                 f"{document_separator!r}")
        splits = tuple(float(f) for f in splits)
        if len(splits) != 3 or min(splits) <= 0 or abs(sum(splits) - 1) > 1e-6:
            raise checks.ArgumentError("splits", f"expected splits of three positive fractions summing to 1, "
                                                  f"got {list(splits)}")
        check_folds(num_folds, fold, None)
        self.save_hyperparameters(logger=False)  # the run logs data.* itself (rnnlab.train.flat_hparams)
        self.vocab: str | None = None
        self.ids: dict[str, torch.Tensor] = {}

    def documents(self) -> list[str]:
        """The corpus as a list of documents: the generated corpus, the file ``path``, every
        file under the directory ``path`` (hidden ones left out) or every file a glob
        ``path`` matches (``**`` reaches into subdirectories), in sorted order. Each file
        that is not non-empty UTF-8 text is refused with its own reason, naming it."""
        hp = self.hparams
        if hp.path is None:
            return [generate_grammar_corpus(hp.corpus_chars, hp.seed)]
        path = Path(hp.path)
        if glob.has_magic(str(path)):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
            if not files:
                raise ConfigError("data.path", f"expected text files, got {str(path)!r}, which matches no file")
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise ConfigError("data.path", f"expected a UTF-8 text file or a directory of them, got "
                                               f"{str(path)!r}, a directory that holds no files")
        else:
            files = [path]
        return [read_text_file(file) for file in files]

    def _text_splits(self) -> dict[str, str]:
        """train/val/test text: the documents joined by ``document_separator`` and cut
        contiguously (``split_by: text``), or whole documents shuffled with ``seed`` and
        dealt to the splits until each holds its fraction of the characters
        (``split_by: documents``)."""
        hp = self.hparams
        documents = self.documents()
        if hp.split_by == "text" or len(documents) == 1:
            train_frac, val_frac, _ = hp.splits
            text = hp.document_separator.join(documents)
            n_train, n_val = int(len(text) * train_frac), int(len(text) * val_frac)
            if hp.get("num_folds") is not None:
                pool, k = text[:n_train + n_val], hp.num_folds
                edges = [len(pool) * i // k for i in range(k + 1)]
                blocks = [pool[edges[i]:edges[i + 1]] for i in range(k)]
                return {"train": hp.document_separator.join(b for i, b in enumerate(blocks) if i != hp.fold),
                        "val": blocks[hp.fold], "test": text[n_train + n_val:]}
            return {"train": text[:n_train], "val": text[n_train:n_train + n_val], "test": text[n_train + n_val:]}
        if len(documents) < 3:
            raise ConfigError("data.split_by", f"expected at least 3 documents to split by document, got "
                                               f"{len(documents)} in {hp.path!r}; use data.split_by=text")
        order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        total = sum(len(d) for d in documents)
        parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        # Every split gets one document first, then each document goes to the first split
        # still short of its share of the characters.
        shares = dict(zip(parts, (fraction * total for fraction in hp.splits)))
        sizes = dict.fromkeys(parts, 0)
        for n, i in enumerate(order):
            split = list(parts)[n] if n < 3 else next((s for s in parts if sizes[s] < shares[s]), "test")
            parts[split].append(documents[i])
            sizes[split] += len(documents[i])
        if hp.get("num_folds") is not None:
            pool = parts["train"] + parts["val"]
            if len(pool) < hp.num_folds:
                raise ConfigError("data.num_folds", f"{hp.path!r} leaves {len(pool)} documents for training and "
                                                    f"validation, fewer than {hp.num_folds} folds")
            folds = fold_ids(len(pool), hp.num_folds, hp.seed * 1000 + 2)
            parts["train"] = [doc for doc, f in zip(pool, folds) if f != hp.fold]
            parts["val"] = [doc for doc, f in zip(pool, folds) if f == hp.fold]
        return {split: hp.document_separator.join(docs) for split, docs in parts.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.ids:
            return
        hp = self.hparams
        parts = self._text_splits()
        total = sum(len(part) for part in parts.values())
        source = repr(hp.path) if hp.path is not None else f"the generated corpus (data.corpus_chars={hp.corpus_chars})"
        for split, part in parts.items():
            if len(part) < hp.seq_len + 1:
                share = len(part) / total
                raise ConfigError("data.seq_len", f"{source} is too short for seq_len={hp.seq_len}: its {split} "
                                                  f"split ({share:.0%} of {total} characters) has {len(part)}, "
                                                  f"fewer than one window of seq_len + 1 = {hp.seq_len + 1}; "
                                                  "use a longer text or a smaller data.seq_len")
        vocab = sorted(set(parts["train"]))
        if set(parts["val"] + parts["test"]) - set(vocab):
            vocab.append(UNKNOWN)
        self.vocab = "".join(vocab)
        stoi = {c: i for i, c in enumerate(self.vocab)}
        unknown = stoi.get(UNKNOWN)
        for split, part in parts.items():
            self.ids[split] = torch.tensor([stoi.get(c, unknown) for c in part], dtype=torch.long)

    @property
    def vocab_size(self) -> int:
        if self.vocab is None:
            raise RuntimeError("the vocabulary is built in setup(); call datamodule.setup() first")
        return len(self.vocab)

    def model_settings(self) -> dict:
        """Values the language model's config takes from this data (see rnnlab.train)."""
        return {"net.vocab_size": self.vocab_size, "vocab": self.vocab, "carry_state": self.hparams.stateful}

    def _stream_loader(self, split: str) -> DataLoader:
        if shard(self)["world_size"] > 1:
            raise ValueError("data.stateful=true reads each split as one set of streams; it needs a single process")
        streams = StreamWindows(self.ids[split], self.hparams.batch_size, self.hparams.seq_len)
        return DataLoader(streams, batch_size=None, shuffle=False, num_workers=self.hparams.num_workers)

    def train_dataloader(self):
        hp = self.hparams
        if hp.stateful:
            return self._stream_loader("train")
        if overfitting(self):
            windows = CharWindows(self.ids["train"], hp.seq_len, stride=hp.seq_len)
            sampler = EpochSampler(len(windows), shuffle=False, **shard(self))
        elif hp.train_windows == "random":
            windows = CharWindows(self.ids["train"], hp.seq_len, stride=1)
            per_epoch = hp.windows_per_epoch or max(1, len(self.ids["train"]) // hp.seq_len)
            sampler = EpochSampler(len(windows), shuffle=True, num_samples=per_epoch, replacement=True, **shard(self))
        else:
            windows = CharWindows(self.ids["train"], hp.seq_len, stride=hp.seq_len)
            sampler = EpochSampler(len(windows), shuffle=True, num_samples=hp.windows_per_epoch, **shard(self))
        return batched_loader(windows, hp.batch_size, sampler, num_workers=hp.num_workers)

    def _eval_loader(self, split: str):
        if self.hparams.stateful:
            return self._stream_loader(split)
        windows = CharWindows(self.ids[split], self.hparams.seq_len, stride=self.hparams.seq_len)
        sampler = EpochSampler(len(windows), shuffle=False, pad=False, **shard(self))
        return batched_loader(windows, self.hparams.batch_size, sampler, num_workers=self.hparams.num_workers)

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")
