"""One job around train(), in process: rnnlab.train.run's result.json, sweeps that go on after a
failure or stop with fail_fast, resumes that leave the run directory as it was, threads per
parallel job; and the sweep summary's exit status. (tests/sweeps runs the same as processes.)"""

import json
import math
import os

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from helpers import QUIET, TINY, compose_config
from rnnlab.checkpoints import CheckpointError, epochs_done
from rnnlab.callbacks import latest_checkpoint
from rnnlab.errors import ConfigError
from rnnlab.summarize import SweepSummary, sweep_failure, summarize
from rnnlab.train import run, set_threads


def job_config(tmp_path, *overrides, multirun=False, output_subdir=".hydra"):
    """A composed training config whose Hydra settings say what run() reads: the run's
    directory, multirun or not, and where Hydra wrote the run's .hydra/ record."""
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "model.net.hidden_size=8", "trainer.max_epochs=1",
                                   *overrides], tmp_path)
    hydra = HydraConfig.get()
    with read_write(hydra), open_dict(hydra):
        hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        hydra.runtime.output_dir = str(tmp_path)
        hydra.output_subdir = output_subdir
        hydra.sweep.dir = str(tmp_path.parent)
    return cfg


def result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_a_job_records_its_result_metrics_and_which_way_its_metric_is_better(tmp_path):
    value = run(job_config(tmp_path))
    recorded = result(tmp_path)
    assert recorded["status"] == "ok" and recorded["error"] == ""
    assert recorded["optimized_metric"] == "val/acc_best" and recorded["mode"] == "max"
    assert recorded["value"] == value == recorded["metrics"]["val/acc_best"]
    assert {"test/acc", "val/loss", "train/loss_epoch"} <= set(recorded["metrics"])
    assert recorded["wall_time_s"] > 0 and "model.net.hidden_size=8" in recorded["overrides"]


def test_a_failing_job_is_recorded_and_raises_alone_but_not_in_a_sweep(tmp_path):
    with pytest.raises(ConfigError):
        run(job_config(tmp_path / "single", "model.net.hidden_size=0"))
    assert result(tmp_path / "single")["status"] == "failed"
    # In a multirun the job is recorded and the sweep goes on: run() returns.
    sweep = tmp_path / "sweep"
    assert run(job_config(sweep / "0", "model.net.hidden_size=0", multirun=True)) is None
    failed = result(sweep / "0")
    assert failed["status"] == "failed" and failed["value"] is None
    assert failed["error"] == "ConfigError: model.net.hidden_size: expected hidden_size >= 1, got 0"
    # With fail_fast=true the later jobs of the sweep are skipped without training.
    assert run(job_config(sweep / "1", "fail_fast=true", multirun=True)) is None
    skipped = result(sweep / "1")
    assert skipped["status"] == "skipped" and skipped["error"] == "job 0 failed and fail_fast=true"
    assert not (sweep / "1" / "checkpoints").exists()


def test_a_refused_resume_writes_nothing_and_an_accepted_one_replaces_the_record(tmp_path, classifier_ckpt):
    staged = tmp_path / ".hydra" / "resume"
    staged.mkdir(parents=True)
    (staged / "config.yaml").write_text("the resumed run's config\n")
    refused = job_config(tmp_path, "model.net.hidden_size=32", f"ckpt_path={classifier_ckpt}",
                         output_subdir=".hydra/resume")
    with pytest.raises(CheckpointError, match="holds a different model"):
        run(refused)
    assert not staged.exists() and not (tmp_path / "result.json").exists()
    # The same checkpoint with its own settings and two more epochs: accepted.
    staged.mkdir()
    (staged / "config.yaml").write_text("the resumed run's config\n")
    accepted = job_config(tmp_path, "model.net.hidden_size=16", "trainer.max_epochs=4", "model.scheduler.T_max=2",
                          f"ckpt_path={classifier_ckpt}", output_subdir=".hydra/resume")
    run(accepted)
    assert not staged.exists() and (tmp_path / ".hydra" / "config.yaml").read_text() == "the resumed run's config\n"
    assert result(tmp_path)["status"] == "ok"


@pytest.mark.parametrize("overrides,threads", [
    (["hydra/launcher=joblib"], 4),                        # 2 parallel jobs on 8 cores
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], 2),
    (["trainer=ddp_cpu"], 4),                              # 2 CPU processes
    (["hydra/launcher=joblib", "threads=3"], 3),            # an explicit count wins
    (["trainer=ddp_cpu", "threads=3"], 3),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], None),  # one job at a time: left as it is
    ([], None),                                              # one process: left as it is
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=16"], 1),     # more jobs than cores: one each
    (["trainer=ddp_cpu", "trainer.devices=16"], 1),
])
def test_parallel_jobs_and_processes_share_the_cores(overrides, threads, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(5)  # a count none of the cases sets
    try:
        set_threads(compose_config("train", overrides, tmp_path))
        assert torch.get_num_threads() == (5 if threads is None else threads)
    finally:
        torch.set_num_threads(before)


def _row(job, status, error=""):
    return {"job": job, "status": status, "error": error}


def test_a_sweep_fails_when_no_job_finished_or_fail_fast_stopped_it():
    assert sweep_failure([_row("0", "ok"), _row("1", "failed", "E: x")], fail_fast=False) is None
    assert sweep_failure([_row("0", "ok"), _row("1", "skipped")], fail_fast=False) is None
    assert sweep_failure([_row("0", "failed", "E: x"), _row("1", "skipped")], fail_fast=False) == (
        "no job of the sweep finished (1 failed, 1 skipped); first error: E: x")
    assert sweep_failure([_row("0", "ok"), _row("1", "failed", "E: y"), _row("2", "skipped"), _row("3", "skipped")],
                         fail_fast=True) == "job 1 failed and fail_fast=true stopped the sweep (2 later jobs skipped): E: y"
    assert sweep_failure([_row("0", "ok"), _row("1", "failed", "E: y"), _row("2", "skipped")], fail_fast=True) == \
        "job 1 failed and fail_fast=true stopped the sweep (1 later job skipped): E: y"
    assert sweep_failure([_row("0", "ok"), _row("1", "ok")], fail_fast=True) is None
    assert sweep_failure([_row("0", "failed", "E: x"), _row("1", "interrupted"), _row("2", "failed")],
                         fail_fast=False) == "no job of the sweep finished (2 failed, 1 interrupted); first error: E: x"


def _write_result(sweep_dir, job, status, value=None):
    (sweep_dir / job).mkdir(parents=True)
    (sweep_dir / job / "result.json").write_text(json.dumps({
        "overrides": [f"seed={job}"], "optimized_metric": "val/acc_best", "mode": "max", "status": status,
        "error": "" if status == "ok" else "ValueError: bad", "value": value,
        "metrics": {} if value is None else {"val/acc_best": value}, "wall_time_s": 1.0}))


def test_the_sweep_callback_summarizes_then_exits_1_when_nothing_finished(tmp_path, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "fail_fast": False})
    _write_result(tmp_path, "0", "ok", 0.7)
    _write_result(tmp_path, "1", "failed")
    SweepSummary().on_multirun_end(config)
    assert (tmp_path / "summary.md").exists() and (tmp_path / "summary.csv").exists()
    (tmp_path / "0" / "result.json").unlink()
    with pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(config)
    assert exited.value.code == 1 and "Error: no job of the sweep finished (1 failed)" in capsys.readouterr().err
    assert [row["job"] for row in summarize(tmp_path)] == ["1"]


def test_summarize_refuses_a_directory_without_jobs(tmp_path):
    with pytest.raises(ValueError, match="which has none"):
        summarize(tmp_path)


def test_the_last_good_checkpoint_is_the_newest_that_exists(tmp_path):
    from types import SimpleNamespace

    # Newest by modification time, not by name: the older file has the name that sorts last.
    older, newer, gone = tmp_path / "last.ckpt", tmp_path / "epoch_000.ckpt", tmp_path / "epoch_001.ckpt"
    older.write_bytes(b"1")
    newer.write_bytes(b"2")
    os.utime(older, (1, 1))
    callbacks = [SimpleNamespace(best_model_path=str(older), last_model_path=""),
                 SimpleNamespace(best_model_path=str(gone), last_model_path=str(newer))]
    assert latest_checkpoint(SimpleNamespace(checkpoint_callbacks=callbacks)) == str(newer)
    assert latest_checkpoint(SimpleNamespace(checkpoint_callbacks=callbacks[:1])) == str(older)
    assert latest_checkpoint(SimpleNamespace(checkpoint_callbacks=[])) is None


def test_the_epochs_a_checkpoint_finished_are_read_from_its_loop_state():
    # Saved by Ctrl-C during the third epoch: epoch 2 had started, two were done.
    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 2, "completed": 2}}}}
    assert epochs_done({"loops": loops, "epoch": 2}) == 2
    assert epochs_done({"epoch": 4}) == 5  # a checkpoint without loop state: saved at an epoch's end
    assert epochs_done({"loops": None, "epoch": 0}) == 1
    assert epochs_done({}) == 0


def test_the_sweep_callback_exits_1_after_a_failure_only_under_fail_fast(tmp_path, capsys):
    _write_result(tmp_path, "0", "ok", 0.7)
    _write_result(tmp_path, "1", "failed")
    _write_result(tmp_path, "2", "skipped")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "fail_fast": False})
    SweepSummary().on_multirun_end(config)  # a failed job alone does not fail the sweep
    config.fail_fast = True
    with pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(config)
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "Error: job 1 failed and fail_fast=true stopped the sweep (1 later job skipped): ValueError: bad; "
        f"see {tmp_path / 'summary.md'}")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))  # no key: off


def test_sweep_results_are_read_in_job_order_with_each_override_as_a_parameter(tmp_path):
    from rnnlab.summarize import load_results

    for job in ("10", "2", "0", "11"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps({
            "overrides": [f"seed={job}", "+data.path=/data/a=b.txt", "~callbacks.early_stopping"],
            "optimized_metric": "val/acc_best", "mode": "max", "status": "interrupted" if job == "10" else "ok",
            "error": "", "value": 0.9 if job == "10" else 0.5, "metrics": {}, "wall_time_s": 1.0}))
    rows = load_results(tmp_path)
    assert [r["job"] for r in rows] == ["0", "2", "10", "11"]  # by number, not "10" before "2"
    assert rows[0]["params"] == {"seed": "0", "data.path": "/data/a=b.txt", "callbacks.early_stopping": ""}
    # An interrupted job keeps its value but ranks after every finished one, and ties keep the job order.
    assert [r["job"] for r in summarize(tmp_path)] == ["0", "2", "11", "10"]
    with pytest.raises(ValueError) as raised:
        load_results(tmp_path / "0" / "result.json")
    assert str(raised.value).endswith("which is a file")
    with pytest.raises(ValueError) as raised:
        load_results(tmp_path / "nowhere")
    assert str(raised.value) == (f"expected a sweep directory (one sub-directory with result.json per job), "
                                 f"got {str(tmp_path / 'nowhere')!r}, which does not exist")


def _plain_job(tmp_path, **keys):
    """A job config without Hydra: what run() reads, and nothing else."""
    return OmegaConf.create({"optimized_metric": "val/acc_best", "optimized_mode": "max", "fail_fast": False,
                             "threads": 1, "paths": {"output_dir": str(tmp_path)}, **keys})


def test_a_job_outside_hydra_records_no_overrides(tmp_path, monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # as a Python caller without Hydra
    monkeypatch.setattr("rnnlab.train.train", lambda cfg, before_fit: ({"val/acc_best": 0.75, "other": 1.0}, 0.75))
    assert run(_plain_job(tmp_path)) == 0.75
    recorded = result(tmp_path)
    assert recorded["overrides"] == [] and recorded["status"] == "ok"
    assert recorded["metrics"] == {"val/acc_best": 0.75}  # only train/, val/ and test/ metrics are kept


def test_a_job_records_its_overrides_as_typed_and_a_failure_with_empty_metrics(tmp_path, monkeypatch):
    cfg = job_config(tmp_path, multirun=True)
    with read_write(HydraConfig.get()):
        HydraConfig.get().overrides.task = ["model.net.hidden_size=${data.input_size}", "seed=3"]

    def diverged(cfg, before_fit):
        before_fit()
        return {"val/acc_best": float("nan")}, float("nan")

    monkeypatch.setattr("rnnlab.train.train", diverged)
    assert run(cfg) is None  # a sweep job whose metric is NaN failed, and the sweep goes on
    recorded = result(tmp_path)
    assert recorded["overrides"] == ["model.net.hidden_size=${data.input_size}", "seed=3"]  # not resolved
    assert recorded["status"] == "failed" and recorded["value"] is None
    assert recorded["error"] == "FloatingPointError: optimized metric val/acc_best is nan"
    assert math.isnan(recorded["metrics"]["val/acc_best"])  # what the run measured stays on record

    def refused(cfg, before_fit):
        raise ValueError("bad")

    monkeypatch.setattr("rnnlab.train.train", refused)
    assert run(cfg) is None
    assert result(tmp_path)["metrics"] == {} and result(tmp_path)["error"] == "ValueError: bad"


def test_a_single_run_with_fail_fast_is_not_skipped_for_a_failed_job_beside_it(tmp_path, monkeypatch):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(json.dumps({"status": "failed"}))
    cfg = job_config(tmp_path / "1", "fail_fast=true")  # a single run, sweep.dir is its parent
    monkeypatch.setattr("rnnlab.train.train", lambda cfg, before_fit: ({"val/acc_best": 0.5}, 0.5))
    assert run(cfg) == 0.5 and result(tmp_path / "1")["status"] == "ok"


def test_resuming_a_finished_run_prints_its_recorded_metrics_and_returns_its_value(tmp_path, monkeypatch, capsys):
    from rnnlab.run_checks import RunAlreadyFinished

    def finished(cfg, before_fit):
        raise RunAlreadyFinished("last.ckpt is the end of a finished run",
                                 {"value": 0.875, "metrics": {"val/acc_best": 0.875, "test/acc": 0.5}})

    monkeypatch.setattr("rnnlab.train.train", finished)
    assert run(job_config(tmp_path)) == 0.875
    assert capsys.readouterr().out == ("Nothing to do: last.ckpt is the end of a finished run\nRecorded metrics:\n"
                                       "  test/acc             0.5000\n  val/acc_best         0.8750\n")
    assert not (tmp_path / "result.json").exists()  # the finished run's record is not overwritten
    monkeypatch.setattr("rnnlab.train.train", lambda cfg, before_fit: (_ for _ in ()).throw(
        RunAlreadyFinished("done", {"value": None})))
    assert run(job_config(tmp_path)) is None and capsys.readouterr().out == "Nothing to do: done\n"


def test_an_interrupted_job_is_recorded_as_such_and_the_interrupt_goes_on(tmp_path, monkeypatch):
    def interrupted(cfg, before_fit):
        before_fit()
        raise KeyboardInterrupt

    monkeypatch.setattr("rnnlab.train.train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(job_config(tmp_path, multirun=True))  # even in a sweep: Ctrl-C stops the sweep
    recorded = result(tmp_path)
    assert (recorded["status"], recorded["error"], recorded["value"]) == ("interrupted", "KeyboardInterrupt", None)


def test_a_resumed_sweeps_job_records_a_failure_before_training_and_leaves_another_jobs_directory_alone(tmp_path):
    # A job that never ran before and fails before its first step: its failure is recorded
    # (a single run's refused resume would leave no trace; a sweep's job must appear in the summary).
    job = tmp_path / "sweep" / "3"
    cfg = job_config(job, "model.net.hidden_size=0", "resume_sweep=" + str(tmp_path / "sweep"), multirun=True,
                     output_subdir=".hydra/resume")
    assert run(cfg) is None
    assert result(job)["status"] == "failed" and "resume_sweep=" not in " ".join(result(job)["overrides"])

    # A directory that holds another job's record (its overrides differ) is not touched.
    other = tmp_path / "sweep" / "4"
    other.mkdir(parents=True)
    record = {"overrides": ["model.net.hidden_size=64"], "status": "interrupted", "value": None, "metrics": {}}
    (other / "result.json").write_text(json.dumps(record))
    cfg = job_config(other, "resume_sweep=" + str(tmp_path / "sweep"), multirun=True, output_subdir=".hydra/resume")
    assert run(cfg) is None
    assert result(other) == record and not (other / "checkpoints").exists()


def _job_dir(sweep, number, overrides, status=None, last=False):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), job / ".hydra" / "overrides.yaml")
    if status is not None:
        (job / "result.json").write_text(json.dumps({"overrides": list(overrides), "status": status, "value": 0.5,
                                                     "metrics": {}, "error": "boom"}))
    if last:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    return job


def test_what_each_job_of_a_resumed_sweep_does_follows_its_record(tmp_path):
    """rnnlab.sweeps.prepare_resumed_job on every kind of job directory a killed sweep leaves."""
    from rnnlab.sweeps import JobAlreadyDone, JobMismatch, prepare_resumed_job

    sweep, mine = tmp_path / "sweep", ["model.net.hidden_size=8"]

    def decide(job, rerun=False, overrides=mine):
        cfg = OmegaConf.create({"paths": {"output_dir": str(job)}, "ckpt_path": None, "rerun_failed": rerun})
        return prepare_resumed_job(cfg, [*overrides, f"resume_sweep={sweep}"]), cfg

    with pytest.raises(JobAlreadyDone, match="job 0 finished before") as done:
        decide(_job_dir(sweep, 0, mine, "ok", last=True))
    assert done.value.result == json.loads((sweep / "0" / "result.json").read_text())  # what the job reports
    failed = _job_dir(sweep, 1, mine, "failed", last=True)
    with pytest.raises(JobAlreadyDone, match="job 1 failed before .*rerun_failed=true runs it again"):
        decide(failed)
    (failed / "checkpoints.failed").mkdir()  # an earlier rerun's failed attempt: replaced by this one's
    (failed / "checkpoints.failed" / "old.ckpt").write_bytes(b"older")
    path, cfg = decide(failed, rerun=True)  # runs again from the start
    assert path is None and cfg.ckpt_path is None
    assert not (failed / "checkpoints").exists()
    assert sorted(p.name for p in (failed / "checkpoints.failed").iterdir()) == ["last.ckpt"]
    killed = _job_dir(sweep, 2, mine, None, last=True)  # killed: no result, a checkpoint
    path, cfg = decide(killed)
    assert path == killed / "checkpoints" / "last.ckpt" and cfg.ckpt_path == str(path)
    interrupted = _job_dir(sweep, 3, mine, "interrupted", last=True)  # Ctrl-C
    assert decide(interrupted)[0] == interrupted / "checkpoints" / "last.ckpt"
    assert decide(_job_dir(sweep, 4, mine))[0] is None  # started, no checkpoint yet: starts again
    # A trial an Optuna search asks again under a new number: the interrupted job with its
    # overrides (and no ok result) is continued; one with other overrides is not.
    other = ["model.net.hidden_size=32"]
    asked_again = sweep / "9"
    interrupted_trial = _job_dir(sweep, 8, other, None, last=True)
    assert decide(asked_again, overrides=other)[0] == interrupted_trial / "checkpoints" / "last.ckpt"
    assert decide(sweep / "10", overrides=["model.net.hidden_size=64"])[0] is None
    (interrupted_trial / "continued.json").write_text("{}")  # taken over already: not twice
    assert decide(sweep / "11", overrides=other)[0] is None
    # Only a trial that never finished is continued: one that ended ok or failed is not, an
    # interrupted one (Ctrl-C, recorded as such) is.
    third = ["model.net.hidden_size=48"]
    for number, status in ((12, "ok"), (13, "failed")):
        _job_dir(sweep, number, third, status, last=True)
        assert decide(sweep / f"{number + 10}", overrides=third)[0] is None, status
    stopped = _job_dir(sweep, 14, third, "interrupted", last=True)
    assert decide(sweep / "24", overrides=third)[0] == stopped / "checkpoints" / "last.ckpt"
    with pytest.raises(JobMismatch, match="job 2 of the sweep ran"):
        decide(killed, overrides=other)
