"""Resuming neither loses records nor ignores settings: a refused or no-op resume leaves the
run directory as it was, a changed setting is either applied (more epochs) or refused with
every difference listed, and a checkpoint of another task is named as such."""

import pytest
import torch
from omegaconf import OmegaConf

from helpers import QUIET, TINY, compose_config
from rnnlab.checkpoints import CheckpointError, load_checkpoint
from rnnlab.train import train

# A short classifier run without a learning-rate schedule, so that more epochs can be applied.
RUN = ["model.net.hidden_size=8", "model.scheduler=null", "trainer.max_epochs=2", "threads=1",
       "data.num_train=256", "data.num_val=64", "data.num_test=64"]


def snapshot(run_dir):
    """Every file of a run directory with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.subprocess
def test_resumes_that_are_refused_or_have_nothing_to_do_leave_the_run_as_it_was(tmp_path, script, result):
    run_dir = tmp_path / "run"
    first = script("train", *RUN, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    finished = result(run_dir)
    before = snapshot(run_dir)

    # The same command again: the run has finished, so nothing runs and nothing is written.
    again = script("train", *RUN, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to do:" in again.stdout and "is the end of a finished run (2 epochs" in again.stdout
    assert f"val/acc_best         {finished['metrics']['val/acc_best']:.4f}" in again.stdout
    assert snapshot(run_dir) == before

    # A different model, and changed training settings: refused in one line, nothing written.
    other_model = script("train", *RUN, "model.net.hidden_size=16", f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert other_model.returncode == 1 and "Traceback" not in other_model.stderr
    assert "holds a different model than this run's config: model.net.hidden_size: checkpoint 8, config 16" in \
        other_model.stderr
    changed = script("train", *RUN, "model.optimizer.lr=0.5", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}",
                     "ckpt_path=last")
    assert changed.returncode == 1 and "Traceback" not in changed.stderr
    assert changed.stderr.rstrip().splitlines()[-1].startswith(
        f"Error: ckpt_path: resuming '{run_dir / 'checkpoints' / 'last.ckpt'}' would change settings the run was "
        "trained with: model.optimizer.lr: checkpoint 0.002, config 0.5. A resume continues the run as it was")
    assert snapshot(run_dir) == before

    # More epochs can be applied: the run trains one more, and its records say so.
    longer = script("train", *RUN, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert longer.returncode == 0, longer.stderr[-3000:]
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 3 * 4  # 256 / 64 = 4 steps an epoch
    assert last["rnnlab"]["run"]["trainer"]["max_epochs"] == 3
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == 0.002
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_epochs == 3
    assert "trainer.max_epochs=3" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert not (run_dir / ".hydra" / "resume").exists()
    assert result(run_dir)["status"] == "ok"


def test_a_resume_that_would_change_the_schedule_lists_every_difference(classifier_ckpt, tmp_path):
    # classifier_ckpt: 2 epochs with a cosine schedule whose T_max is trainer.max_epochs (2).
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "model.net.hidden_size=16", "trainer.max_epochs=4",
                                   "model.optimizer.lr=0.5", f"ckpt_path={classifier_ckpt}"], tmp_path)
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    assert str(raised.value).startswith(
        f"ckpt_path: resuming '{classifier_ckpt}' would change settings the run was trained with: "
        "model.optimizer.lr: checkpoint 0.002, config 0.5; model.scheduler.T_max: checkpoint 2, config 4. ")
    assert not (tmp_path / "checkpoints").exists()


def test_resuming_another_tasks_checkpoint_says_so(classifier_ckpt, tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn", f"ckpt_path={classifier_ckpt}"],
                         tmp_path)
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    assert str(raised.value) == (f"ckpt_path: '{classifier_ckpt}' is a checkpoint of another task: "
                                 "ClassificationTask (rnnlab.models.SequenceClassifier), while this run trains a "
                                 "LanguageModelTask; choose the model= of the run it comes from")


def test_checkpoints_record_the_settings_a_resume_compares(classifier_ckpt):
    saved = torch.load(classifier_ckpt, weights_only=True)["rnnlab"]
    assert saved["run"]["seed"] == 12345 and saved["run"]["trainer"]["max_epochs"] == 2
    assert saved["data"]["num_train"] == 512
