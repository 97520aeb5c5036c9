"""A corpus file that cannot be trained on gets its own message naming the path."""

import re

import pytest

from helpers import QUIET, compose_config
from rnnlab.data import CharDataModule
from rnnlab.train import train


def make_corpus(kind, tmp_path):
    path = tmp_path / "corpus.txt"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "too_short":
        path.write_text("To be, or not to be: that is the question.\n" * 10)  # 430 characters
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif kind == "latin1":
        path.write_bytes("Café crème, naïve façade.\n".encode("latin-1") * 50)
    return path


REASONS = {
    "missing": (FileNotFoundError, "data.path: expected a UTF-8 text file, got '{path}', which does not exist"),
    "directory": (ValueError, "data.path: expected a UTF-8 text file or a directory of them, got '{path}', a "
                              "directory that holds no files"),
    "empty": (ValueError, "data.path: expected a UTF-8 text file, got '{path}', which is empty"),
    "too_short": (ValueError, "data.seq_len: '{path}' is too short for seq_len=128: its val split "
                              "(5% of 430 characters) has 21, fewer than one window of seq_len + 1 = 129"),
    "binary": (ValueError, "data.path: expected a UTF-8 text file, got '{path}', which is binary "
                           "(a NUL byte at offset 8)"),
    "latin1": (ValueError, "data.path: expected a UTF-8 text file, got '{path}', which is not valid UTF-8 "
                           "(byte 0xe9 at offset 3)"),
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_unusable_corpus_file_is_named_with_its_own_reason(kind, tmp_path):
    path = make_corpus(kind, tmp_path)
    error, message = REASONS[kind]
    with pytest.raises(error, match=re.escape(message.format(path=path))):
        CharDataModule(path=str(path), seq_len=128).setup("fit")


def test_training_on_a_binary_file_ends_before_any_model_is_built(tmp_path):
    path = make_corpus("binary", tmp_path)
    cfg = compose_config("train", [*QUIET, "model=char_rnn", f"data.path={path}"], tmp_path / "run")
    expected = f"data.path: expected a UTF-8 text file, got '{path}', which is binary"
    with pytest.raises(ValueError, match=re.escape(expected)):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_short_but_sufficient_file_trains(tmp_path):
    """The checks refuse only what cannot work: a 430-character text with seq_len=16 is fine."""
    path = make_corpus("too_short", tmp_path)
    data = CharDataModule(path=str(path), seq_len=16, batch_size=8)
    data.setup("fit")
    assert set(data.vocab) == set("To be, or not to be: that is the question.\n")
