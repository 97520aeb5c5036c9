"""Faults during training, with real processes: kill -9 and resume, Ctrl-C, a diverging loss,
and the same run twice. Resumed runs must end bit for bit where an uninterrupted run ends."""

import csv
import math
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT
from rnnlab.callbacks import TrainingDiverged
from rnnlab.checkpoints import load_checkpoint
from rnnlab.errors import INTERRUPTED_STATUS

# The tagger's learning rate multiplied by 1e40 after the first epoch: a real blow-up, not
# an injected NaN. Epoch 0 trains normally and saves its checkpoints.
BLOW_UP = "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:1e40}"


def wait_for(path, proc, timeout=240.0):
    """Block until ``path`` exists (the process is still running) or fail."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_run(run_dir, reference_dir, result):
    """Same metrics to the last bit, same final and best weights, same best checkpoint."""
    ours, theirs = result(run_dir), result(reference_dir)
    assert ours["status"] == "ok"
    assert ours["metrics"] == theirs["metrics"]
    assert ours["value"] == theirs["value"]
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert names == sorted(p.name for p in (reference_dir / "checkpoints").glob("*.ckpt"))
    for name in names:
        a, b = weights(run_dir / "checkpoints" / name), weights(reference_dir / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.subprocess
def test_sigkill_then_resume_with_ckpt_path_last_matches_an_uninterrupted_run(
        tmp_path, reference_run, start_training, script, train_args, result):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    time.sleep(0.3)  # let it get into a later epoch, past the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(last)
    assert saved["epoch"] < 9 and not (run_dir / "result.json").exists()  # killed mid-training

    resumed = script("train", *train_args, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr
    assert_same_run(run_dir, reference_run(), result)


@pytest.mark.subprocess
def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(
        tmp_path, reference_run, start_training, script, train_args, result):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == INTERRUPTED_STATUS, err[-3000:]
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("Interrupted: stopped after epoch ")
    assert f"hydra.run.dir={run_dir} ckpt_path=last" in err
    saved = load_checkpoint(last)
    stopped = int(err.rsplit("stopped after epoch ", 1)[1].split()[0])
    assert saved["epoch"] == stopped < 9  # the checkpoint of the epoch it stopped after
    assert result(run_dir)["status"] == "interrupted"

    resumed = script("train", *train_args, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, reference_run(), result)


def test_ckpt_path_last_without_a_checkpoint_names_the_path(tmp_path, tiny_run):
    with pytest.raises(ValueError, match=r"ckpt_path: 'last' resumes from .*" + str(tmp_path / "checkpoints")
                                         + r"/last.ckpt' does not exist; name the run to resume with hydra.run.dir"):
        tiny_run(tmp_path, "ckpt_path=last")


def test_same_config_and_seed_twice_gives_identical_metrics_and_weights(tmp_path, tiny_run):
    overrides = ("model=classifier", "trainer.max_epochs=2", "trainer.deterministic=true")
    _, first = tiny_run(tmp_path / "a", *overrides)
    _, second = tiny_run(tmp_path / "b", *overrides)
    first.pop("time/wall_s"), second.pop("time/wall_s")
    assert first == second and "test/acc" in first
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch_001.ckpt", "last.ckpt"] or names == ["epoch_000.ckpt", "last.ckpt"]
    for name in names:
        a, b = weights(tmp_path / "a" / "checkpoints" / name), weights(tmp_path / "b" / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.filterwarnings("ignore:Encountered `nan` values")  # torchmetrics, on the NaN loss
def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_run):
    with pytest.raises(TrainingDiverged) as raised:
        tiny_run(tmp_path, "model=tagger", "trainer.max_epochs=4", BLOW_UP, data="tagging")
    message = str(raised.value)
    step = int(message.split(" at step ")[1].split()[0])
    assert message.startswith("the training loss is nan at step ") and "(epoch 1)" in message
    assert step >= 8  # epoch 0 has 8 steps, all finite
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint, '{last}', is kept" in message
    saved = load_checkpoint(last)
    assert saved["epoch"] == 0 and saved["global_step"] == 8
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())


@pytest.mark.subprocess
def test_nan_job_in_a_sweep_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "scripts/train.py", "-m", "model=tagger", "data.num_train=512", "data.num_val=128",
           "data.num_test=128", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "callbacks.rich_progress_bar=null",
           "callbacks.rich_model_summary=null", "threads=1", BLOW_UP, "model.scheduler.gamma=1e40,1.0",
           f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep_dir / "summary.csv") as f:
        rows = {float(r["model.scheduler.gamma"]): r for r in csv.DictReader(f)}
    assert rows[1.0]["status"] == "ok" and math.isfinite(float(rows[1.0]["val/acc_best"]))
    assert rows[1e40]["status"] == "failed"
    assert rows[1e40]["error"].startswith("TrainingDiverged: the training loss is nan at step ")


def test_resume_replaces_the_checkpoint_a_crashed_run_left_behind(tmp_path, tiny_run):
    # A crash after the best checkpoint of an epoch is written but before last.ckpt is leaves
    # epoch_001.ckpt on disk, unknown to the checkpoint state the run resumes from. The
    # resumed run re-creates that epoch exactly and must overwrite the file, not write
    # epoch_001-v1.ckpt beside an orphan that is never cleaned up.
    common = ["model.scheduler=null", "test=false", "callbacks.model_checkpoint.save_top_k=2"]
    tiny_run(tmp_path / "full", *common, "trainer.max_epochs=2")
    tiny_run(tmp_path / "crashed", *common, "trainer.max_epochs=1")  # last.ckpt holds epoch 0
    shutil.copy(tmp_path / "full" / "checkpoints" / "epoch_001.ckpt",
                tmp_path / "crashed" / "checkpoints" / "epoch_001.ckpt")  # what the crash left
    tiny_run(tmp_path / "crashed", *common, "trainer.max_epochs=2", "ckpt_path=last")
    names = sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").glob("*.ckpt"))
    assert names == sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]
    for name in names:
        a, b = weights(tmp_path / "crashed" / "checkpoints" / name), weights(tmp_path / "full" / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
