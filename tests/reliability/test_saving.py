"""Saving checkpoints: a directory that cannot be written is refused before training, and a
save that fails part-way (a full disk) leaves the previous checkpoint intact."""

import errno
import re

import pytest
import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint
from rnnlab.errors import ConfigError
from rnnlab.train import train

# The tests run as root, for whom chmod does not stop writes; a directory whose parent is a
# regular file cannot be created by anyone, so it stands in for a read-only one.


def blocked_dir(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be\n")
    return blocker, blocker / "checkpoints"


def test_unwritable_checkpoint_directory_is_refused_before_training(tmp_path):
    blocker, ckpt_dir = blocked_dir(tmp_path)
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], f"callbacks.last_checkpoint.dirpath={ckpt_dir}"],
                         tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(
            f"callbacks.last_checkpoint.dirpath: expected a writable directory, got '{ckpt_dir}', "
            f"but '{blocker}' is a file")):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.subprocess
def test_train_script_reports_an_unwritable_output_directory_in_one_line(tmp_path, script):
    blocker, ckpt_dir = blocked_dir(tmp_path)
    proc = script("train", *TINY["synthetic"], f"callbacks.model_checkpoint.dirpath={ckpt_dir}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"Error: callbacks.model_checkpoint.dirpath: expected a writable directory, got '{ckpt_dir}', "
        f"but '{blocker}' is a file")


@pytest.fixture
def disk_fills_up(monkeypatch):
    """From the third checkpoint on, writing fails part-way with ENOSPC, as on a full disk."""
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) <= 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return saves


def test_full_disk_during_training_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, disk_fills_up):
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "trainer.max_epochs=3"], tmp_path)
    with pytest.raises(CheckpointError, match=(
            rf"cannot save checkpoint '{re.escape(str(tmp_path / 'checkpoints'))}/(last|epoch_001).ckpt': "
            r"No space left on device; the checkpoint previously saved there, if any, is unchanged")):
        train(cfg)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]  # no temporary files
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 8


def test_atomic_save_replaces_only_complete_files(tmp_path, disk_fills_up):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    good = target.read_bytes()
    with pytest.raises(CheckpointError, match="No space left on device"):
        io.save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}}, target)
    assert target.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(3))


def test_the_temporary_file_of_a_save_lies_beside_its_target(tmp_path, monkeypatch):
    """os.replace is atomic only within one file system, so the temporary file must be in
    the target's own directory (a temporary directory elsewhere may be another mount)."""
    import os

    moves = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((src, dst)), real_replace(src, dst)))
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    ((src, dst),) = moves
    assert os.path.dirname(src) == str(target.parent) and str(dst) == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
