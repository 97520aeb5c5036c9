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


def test_a_resume_refuses_changed_data_trainer_and_seed_settings_naming_each(classifier_ckpt, tmp_path):
    # classifier_ckpt: 512 training sequences, seed 0 (conf/train.yaml's), no gradient clipping change.
    cfg = compose_config("train", [*QUIET, "data.num_train=256", "data.num_val=128", "data.num_test=128",
                                   "model.net.hidden_size=16", "trainer.max_epochs=2", "seed=7",
                                   "trainer.gradient_clip_val=0.5", f"ckpt_path={classifier_ckpt}"], tmp_path)
    saved = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)["rnnlab"]["run"]
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    assert str(raised.value).startswith(
        f"ckpt_path: resuming '{classifier_ckpt}' would change settings the run was trained with: "
        f"data.num_train: checkpoint 512, config 256; seed: checkpoint {saved['seed']}, config 7; "
        f"trainer.gradient_clip_val: checkpoint {saved['trainer']['gradient_clip_val']!r}, config 0.5. ")


def test_a_checkpoint_without_run_records_is_compared_on_its_model_only(classifier_ckpt, tmp_path):
    # Checkpoints written before the run's data, trainer and seed were recorded: those may differ.
    old = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)
    del old["rnnlab"]["run"], old["rnnlab"]["data"]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    from rnnlab.checkpoints import check_resumable
    from rnnlab.tasks import ClassificationTask

    task = ClassificationTask(dict(old["hyper_parameters"]["net"]), old["hyper_parameters"]["optimizer"],
                              old["hyper_parameters"].get("scheduler"))
    task.data_config, task.run_config = {"num_train": 1}, {"seed": 99, "trainer": {"max_epochs": 1}}
    check_resumable(old, task, path)  # no error: only the model is compared
    task_other = ClassificationTask({**old["hyper_parameters"]["net"], "hidden_size": 32},
                                    old["hyper_parameters"]["optimizer"], old["hyper_parameters"].get("scheduler"))
    with pytest.raises(CheckpointError, match="model.net.hidden_size: checkpoint 16, config 32"):
        check_resumable(old, task_other, path)
