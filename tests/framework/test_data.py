"""DataModules: task definitions, determinism, splits, windows, vocabulary and batching."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import SHAKESPEARE
from rnnlab.data import CharDataModule, SyntheticSequenceDataModule, TaggingDataModule
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


def test_strided_training_windows_do_not_overlap():
    dm = _setup(CharDataModule(corpus_chars=5000, seq_len=10, batch_size=1000, train_windows="strided"))
    dm.ids["train"] = torch.arange(len(dm.ids["train"]))  # every window now starts with its offset
    starts = torch.cat([x[:, 0] for x, _ in dm.train_dataloader()])
    assert len(starts) == (len(dm.ids["train"]) - 11) // 10 + 1
    assert len(set(starts.tolist())) == len(starts) and bool((starts % 10 == 0).all())


def test_epoch_order_is_a_function_of_seed_and_epoch():
    from rnnlab.data._loading import EpochSampler

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
    from rnnlab.data._loading import EpochSampler

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
