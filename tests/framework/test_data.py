"""DataModules: task definitions, determinism, splits, windows, vocabulary and batching."""

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import SHAKESPEARE
from datafiles import make_sentences, make_sequences, write_conll, write_sequences
from rnnlab.data import (CharDataModule, ConllDataModule, SequenceFileDataModule, SyntheticSequenceDataModule,
                         TaggingDataModule)
from rnnlab.data.chars import CharWindows
from rnnlab.data.grammar import generate_grammar_corpus


def _setup(dm):
    dm.setup("fit")
    return dm


def test_synthetic_labels_are_the_sign_of_the_sequence_mean():
    dm = _setup(SyntheticSequenceDataModule(num_train=300, num_val=50, num_test=50, batch_size=32))
    x, y = dm.splits["train"].tensors
    assert x.shape == (300, 20, 10) and y.dtype == torch.int64
    assert torch.equal(y, (x.mean(dim=(1, 2)) > 0).long())
    assert 0.35 < y.float().mean() < 0.65
    assert {len(dm.splits[s]) for s in ("val", "test")} == {50}


def test_synthetic_data_is_deterministic_and_splits_independent():
    a = _setup(SyntheticSequenceDataModule(num_train=100, num_val=20, num_test=20, seed=3))
    b = _setup(SyntheticSequenceDataModule(num_train=200, num_val=20, num_test=20, seed=3))
    c = _setup(SyntheticSequenceDataModule(num_train=100, num_val=20, num_test=20, seed=4))
    assert torch.equal(a.splits["val"].tensors[0], b.splits["val"].tensors[0])  # train size is irrelevant
    assert torch.equal(a.splits["train"].tensors[0], b.splits["train"].tensors[0][:100])
    assert not torch.equal(a.splits["val"].tensors[0], c.splits["val"].tensors[0])
    assert not torch.equal(a.splits["train"].tensors[0][:20], a.splits["val"].tensors[0])


def test_tagging_tags_are_previous_and_next_symbol_pairs():
    dm = _setup(TaggingDataModule(num_train=50, num_val=10, num_test=10, seq_len=7, num_symbols=3, batch_size=8))
    x, tags = dm.splits["train"].tensors
    assert x.shape == (50, 7, 3) and tags.shape == (50, 7) and (dm.input_size, dm.num_tags) == (3, 9)
    symbols = x.argmax(-1)
    for n in range(5):
        for t in range(7):
            prev = symbols[n, t - 1].item() if t > 0 else 0
            nxt = symbols[n, t + 1].item() if t < 6 else 0
            assert tags[n, t].item() == 3 * prev + nxt


def test_batched_loader_gives_the_same_batches_as_per_sample_collation():
    dm = _setup(SyntheticSequenceDataModule(num_train=200, num_val=70, num_test=20, batch_size=32))
    fast = list(dm.val_dataloader())
    slow = list(DataLoader(dm.splits["val"], batch_size=32, shuffle=False))
    assert len(fast) == len(slow) == 3
    for (xf, yf), (xs, ys) in zip(fast, slow):
        assert torch.equal(xf, xs) and torch.equal(yf, ys)
    torch.manual_seed(0)
    train_batches = list(dm.train_dataloader())
    seen = torch.cat([y for _, y in train_batches])
    assert len(seen) == 200 and sorted(b[0].shape[0] for b in train_batches)[0] == 200 - 6 * 32


def test_char_windows_are_shifted_by_one_and_cover_splits():
    dm = _setup(CharDataModule(corpus_chars=20000, seq_len=16, batch_size=8))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    total = sum(len(dm.ids[s]) for s in ("train", "val", "test"))
    assert total >= 20000 and len(dm.ids["train"]) == int(total * 0.9)
    # Validation windows tile the split without overlap, in order.
    val_x = torch.cat([bx for bx, _ in dm.val_dataloader()])
    assert torch.equal(val_x.flatten(), dm.ids["val"][: val_x.numel()])


def test_char_vocabulary_comes_from_training_text_and_decodes():
    dm = _setup(CharDataModule(corpus_chars=20000, seq_len=16))
    text = generate_grammar_corpus(20000, 0)
    assert dm.vocab == "".join(sorted(set(text[: len(dm.ids["train"])]))) and dm.vocab_size == len(dm.vocab)
    decoded = "".join(dm.vocab[i] for i in dm.ids["train"][:200].tolist())
    assert decoded == text[:200]
    assert dm.model_settings() == {"net.vocab_size": dm.vocab_size, "vocab": dm.vocab, "carry_state": False}


def test_characters_unseen_in_training_map_to_the_replacement_character(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("ab" * 450 + "abz" * 30 + "ab" * 5, encoding="utf-8")
    dm = _setup(CharDataModule(path=str(path), seq_len=8, splits=(0.9, 0.05, 0.05)))
    assert dm.vocab == "ab\ufffd"
    assert (dm.ids["val"] == 2).sum() > 0


def test_user_text_file_is_read(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("héllo wörld\n" * 200, encoding="utf-8")
    dm = _setup(CharDataModule(path=str(path), seq_len=10))
    assert set(dm.vocab) == set("héllo wörld\n")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CharDataModule(path=str(tmp_path / "missing.txt")).setup()


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tinyshakespeare not available")
def test_tinyshakespeare_splits_90_5_5():
    dm = _setup(CharDataModule(path=str(SHAKESPEARE), seq_len=128))
    n = 1_115_394
    assert len(dm.ids["train"]) == int(n * 0.9) and len(dm.ids["val"]) == int(n * 0.05)
    assert dm.vocab_size == 65
    per_epoch = sum(1 for _ in dm.train_dataloader())
    assert per_epoch == math.ceil((int(n * 0.9) // 128) / 64)


def test_a_text_file_splits_90_5_5_contiguously(tmp_path):
    """The split rule on a file of any length (the tinyshakespeare test above needs ../shared)."""
    text = generate_grammar_corpus(100_003, seed=7)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    dm = _setup(CharDataModule(path=str(path), seq_len=64))
    n = len(text)
    n_train, n_val = int(n * 0.9), int(n * 0.05)
    decoded = {split: "".join(dm.vocab[i] for i in dm.ids[split].tolist()) for split in ("train", "val", "test")}
    assert decoded["train"] == text[:n_train] and decoded["val"] == text[n_train:n_train + n_val]
    assert decoded["test"] == text[n_train + n_val:]
    assert dm.vocab == "".join(sorted(set(text[:n_train])))
    assert sum(1 for _ in dm.train_dataloader()) == math.ceil((n_train // 64) / 64)


def test_strided_training_windows_do_not_overlap():
    dm = _setup(CharDataModule(corpus_chars=5000, seq_len=10, batch_size=1000, train_windows="strided"))
    dm.ids["train"] = torch.arange(len(dm.ids["train"]))  # every window now starts with its offset
    starts = torch.cat([x[:, 0] for x, _ in dm.train_dataloader()])
    assert len(starts) == (len(dm.ids["train"]) - 11) // 10 + 1
    assert len(set(starts.tolist())) == len(starts) and bool((starts % 10 == 0).all())


def test_a_char_window_indexed_alone_is_the_text_at_its_offset_and_its_batch_row():
    ids = torch.arange(100) * 7 % 65
    windows = CharWindows(ids, seq_len=10, stride=3)
    assert len(windows) == (100 - 11) // 3 + 1 == 30
    bx, by = windows.gather([4, len(windows) - 1])
    for row, item in enumerate([4, len(windows) - 1]):
        x, y = windows[item]
        assert torch.equal(x, ids[3 * item:3 * item + 10]) and torch.equal(y, ids[3 * item + 1:3 * item + 11])
        assert torch.equal(x, bx[row]) and torch.equal(y, by[row])


def test_epoch_order_is_a_function_of_seed_and_epoch():
    from rnnlab.data.batching import EpochSampler

    a, b = EpochSampler(100, shuffle=True, seed=1), EpochSampler(100, shuffle=True, seed=1)
    first = list(a)
    assert sorted(first) == list(range(100)) and first == list(b)
    a.set_epoch(1)
    assert list(a) != first  # a new epoch, a new order...
    a.set_epoch(0)
    assert list(a) == first  # ...and epoch 0 again is epoch 0, whatever ran before
    assert list(EpochSampler(100, shuffle=True, seed=2)) != first


@pytest.mark.parametrize("pad", [True, False])
def test_ddp_shards_split_one_permutation(pad):
    from rnnlab.data.batching import EpochSampler

    whole = list(EpochSampler(101, shuffle=True, seed=5))
    shards = [list(EpochSampler(101, shuffle=True, seed=5, rank=r, world_size=2, pad=pad)) for r in range(2)]
    assert [len(s) for s in shards] == ([51, 51] if pad else [51, 50])
    assert set(shards[0]) | set(shards[1]) == set(whole)
    if not pad:
        assert sorted(shards[0] + shards[1]) == sorted(whole)  # evaluation counts each item once


def test_loader_sampler_takes_lightnings_set_epoch():
    from lightning.fabric.utilities.data import _set_sampler_epoch  # what the fit loop calls

    dm = _setup(SyntheticSequenceDataModule(num_train=64, num_val=8, num_test=8, batch_size=64))
    loader = dm.train_dataloader()
    first = next(iter(loader))[1]
    _set_sampler_epoch(loader, 1)
    assert not torch.equal(next(iter(loader))[1], first)
    _set_sampler_epoch(loader, 0)
    assert torch.equal(next(iter(loader))[1], first)


def _attached(dm, rank=0, world_size=1, overfit_batches=0):
    """``dm`` with a trainer attached the way Lightning attaches one (``datamodule.trainer``),
    holding only what the loaders read from it."""
    from types import SimpleNamespace

    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, overfit_batches=overfit_batches)
    return dm


def _rows(batches) -> torch.Tensor:
    """Every sample a loader gave, one row each: its input flattened (variable-length
    batches, each cut to its own longest sequence, padded back to one width)."""
    rows = [b[0].flatten(1).float() for b in batches]
    width = max(r.shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in rows])


def _sequence_files(directory: Path) -> SequenceFileDataModule:
    path = directory / "train.npz"
    if not path.exists():
        write_sequences(path, *make_sequences(300), "npz")
    return SequenceFileDataModule(str(path), batch_size=16)


def _conll_files(directory: Path) -> ConllDataModule:
    path = directory / "train.conll"
    if not path.exists():
        write_conll(path, make_sentences(300))
    return ConllDataModule(str(path), batch_size=16)


# Each builds a data module, given a directory for the files it reads.
DATA_MODULES = {
    "synthetic": lambda _: SyntheticSequenceDataModule(num_train=300, num_val=70, num_test=50, batch_size=16),
    "synthetic_varlen": lambda _: SyntheticSequenceDataModule(num_train=300, num_val=70, num_test=50, batch_size=16,
                                                              min_len=5),
    "tagging": lambda _: TaggingDataModule(num_train=300, num_val=70, num_test=50, batch_size=16),
    "chars_random": lambda _: CharDataModule(corpus_chars=8000, seq_len=16, batch_size=8, windows_per_epoch=200),
    "chars_strided": lambda _: CharDataModule(corpus_chars=8000, seq_len=16, batch_size=8, train_windows="strided"),
    "sequence_files": _sequence_files,
    "conll_files": _conll_files,
}


@pytest.mark.parametrize("name", sorted(DATA_MODULES))
def test_each_ddp_rank_reads_its_own_shard_of_every_split(name, tmp_path):
    """What each of two ranks reads: disjoint shards that together are the single-process
    epoch, in half the steps (training) and with every item once (evaluation)."""
    torch.manual_seed(0)  # the shard seed comes from the run's seed (torch.initial_seed)
    single = _attached(_setup(DATA_MODULES[name](tmp_path)))
    ranks = [_attached(_setup(DATA_MODULES[name](tmp_path)), rank=r, world_size=2) for r in range(2)]
    for split in ("train", "val", "test"):
        whole = list(getattr(single, f"{split}_dataloader")())
        shards = [list(getattr(dm, f"{split}_dataloader")()) for dm in ranks]
        expected, *rows = _rows(whole), *(_rows(s) for s in shards)
        width = max(r.shape[1] for r in (expected, *rows))
        expected, *rows = [torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in (expected, *rows)]
        sizes = [len(r) for r in rows]
        if split == "train":  # padded to equal shards by wrapping around: the same steps on every rank
            assert sizes[0] == sizes[1] == math.ceil(len(expected) / 2)
            assert len(shards[0]) == len(shards[1]) == math.ceil(sizes[0] / single.hparams.batch_size)
            assert len(shards[0]) < len(whole)
            expected = torch.cat([expected, expected[: 2 * sizes[0] - len(expected)]])  # the wrapped-around items
        else:  # every item exactly once
            assert sum(sizes) == len(expected) and sizes[0] - sizes[1] in (0, 1)
        # Rank r reads items r, r + 2, r + 4, ... of the single-process order.
        assert torch.equal(rows[0], expected[0::2]) and torch.equal(rows[1], expected[1::2])


def test_stateful_streams_refuse_several_processes():
    dm = _attached(_setup(CharDataModule(corpus_chars=8000, seq_len=16, batch_size=4, stateful=True)),
                   rank=1, world_size=2)
    with pytest.raises(ValueError, match="data.stateful=true reads each split as one set of streams; it needs a "
                                         "single process"):
        dm.train_dataloader()


@pytest.mark.parametrize("name", sorted(DATA_MODULES))
def test_overfit_batches_train_on_the_same_full_batches_every_epoch(name, tmp_path):
    """trainer.overfit_batches (debug=overfit): whole batches of batch_size, the same ones in
    the same order every epoch (Lightning's own fix would hand out single samples here)."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dm = _attached(_setup(DATA_MODULES[name](tmp_path)), overfit_batches=4)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        _set_sampler_epoch(loader, epoch)
        epochs.append([b[0] for _, b in zip(range(4), loader)])
    assert all(len(x) == dm.hparams.batch_size for x in epochs[0])
    assert all(torch.equal(a, b) for a, b in zip(*epochs))
    # Without overfit_batches the next epoch reads other batches.
    dm.trainer.overfit_batches = 0
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 0)
    first = next(iter(loader))[0]
    _set_sampler_epoch(loader, 1)
    assert not torch.equal(next(iter(loader))[0], first)


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + ("to be or not to be\n" * 100).encode())
    dm = _setup(CharDataModule(path=str(path), seq_len=8))
    assert "\ufeff" not in dm.vocab and dm.vocab == "".join(sorted(set("to be or not to be\n")))


def test_a_relative_path_is_kept_absolute(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("abc\n" * 300)
    monkeypatch.chdir(tmp_path)
    dm = CharDataModule(path="corpus.txt", seq_len=8)
    assert dm.hparams.path == str(tmp_path / "corpus.txt")


def test_a_directory_or_glob_of_text_files_is_split_by_text_or_by_whole_documents(tmp_path):
    documents = {f"d{i}.txt": f"<{i}>" + "abc " * (50 + 10 * i) for i in range(8)}
    (tmp_path / "books" / "more").mkdir(parents=True)
    for i, (name, text) in enumerate(documents.items()):
        (tmp_path / "books" / ("more" if i % 2 else ".") / name).write_text(text)
    (tmp_path / "books" / ".notes").write_bytes(b"\x00binary")  # hidden: left out

    def splits(**kwargs):
        data = CharDataModule(seq_len=8, **kwargs)
        return data, data._text_splits()

    data, by_text = splits(path=str(tmp_path / "books"))
    in_order = [documents[p.name] for p in sorted((tmp_path / "books").rglob("d*.txt"))]
    assert "".join(by_text.values()) == "\n\n".join(in_order)  # joined in sorted path order, cut contiguously
    assert len(data.documents()) == 8
    _, by_glob = splits(path=str(tmp_path / "books" / "**" / "d[0-3].txt"), document_separator="|")
    assert "".join(by_glob.values()) == "|".join(documents[f"d{i}.txt"] for i in (0, 2, 1, 3))  # books/, then more/

    _, by_document = splits(path=str(tmp_path / "books"), split_by="documents", seed=3)
    parts = {split: text.split("\n\n") for split, text in by_document.items()}
    assert sorted(sum(parts.values(), [])) == sorted(documents.values())  # each document whole, in one split
    assert all(parts.values()) and len(parts["train"]) > len(parts["val"])
    assert splits(path=str(tmp_path / "books"), split_by="documents", seed=4)[1] != by_document  # seeded


def test_a_file_among_many_that_is_not_text_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("fine text " * 50)
    (tmp_path / "b.txt").write_bytes(b"\x89PNG\x00")
    with pytest.raises(ValueError, match=f"data.path: expected a UTF-8 text file, got '{tmp_path}/b.txt', which is "
                                         "binary"):
        CharDataModule(path=str(tmp_path), seq_len=8).setup("fit")
    with pytest.raises(ValueError, match=f"data.path: expected text files, got '{tmp_path}/\\*.md', which matches "
                                         "no file"):
        CharDataModule(path=str(tmp_path / "*.md"), seq_len=8).setup("fit")
    (tmp_path / "b.txt").write_text("more text " * 50)
    with pytest.raises(ValueError, match="data.split_by: expected at least 3 documents to split by document, got 2"):
        CharDataModule(path=str(tmp_path), seq_len=8, split_by="documents").setup("fit")
