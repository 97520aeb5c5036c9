"""Sweeps killed with SIGKILL (the whole process group) and resumed with resume_sweep=<dir>:
what ran again, what resumed from where, and whether the results equal an uninterrupted sweep."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from helpers import ROOT
from rnnlab.checkpoints import load_checkpoint

pytestmark = pytest.mark.subprocess

# Deterministic, one thread per process: every process computes the same floating-point sums.
COMMON = ["data.num_train=256", "data.num_val=64", "data.num_test=64", "trainer.deterministic=true", "threads=1",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
          "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
GRID = ["model=classifier", *COMMON, "trainer.max_epochs=5", "model.net.hidden_size=8,16,24,32"]
SEARCH = ["hparams_search=classifier_optuna", "hydra.sweeper.n_trials=4", *COMMON, "trainer.max_epochs=5"]
ENV = {k: v for k, v in os.environ.items() if k not in ("RNNLAB_DEBUG", "HYDRA_FULL_ERROR")}


def train_m(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/train.py", "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def kill_when(sweep_dir: Path, args: list[str], *paths: str) -> None:
    """Start the sweep; SIGKILL its whole process group once every path exists."""
    proc = subprocess.Popen([sys.executable, "scripts/train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not all((sweep_dir / p).exists() for p in paths):
        assert proc.poll() is None, f"the sweep ended before {paths} existed: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def result(job_dir: Path) -> dict:
    return json.loads((job_dir / "result.json").read_text())


def test_a_killed_grid_sweep_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path):
    reference = tmp_path / "reference"
    assert train_m(*GRID, f"hydra.sweep.dir={reference}").returncode == 0

    sweep_dir = tmp_path / "sweep"
    kill_when(sweep_dir, GRID, "0/result.json", "1/checkpoints/last.ckpt")
    assert not (sweep_dir / "1" / "result.json").exists()  # job 1 was killed while training
    assert (sweep_dir / "sweep.lock").exists()  # left by the killed process: stale, taken over
    job0 = (sweep_dir / "0" / "result.json").read_bytes()
    job0_ckpts = {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "0" / "checkpoints").iterdir()}
    killed_at = load_checkpoint(sweep_dir / "1" / "checkpoints" / "last.ckpt")["epoch"]

    resumed = train_m(*GRID, f"resume_sweep={sweep_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Job 0 finished before: not run again, its record and checkpoints untouched.
    assert (sweep_dir / "0" / "result.json").read_bytes() == job0
    assert {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "0" / "checkpoints").iterdir()} == job0_ckpts
    assert "Nothing to do: job 0 finished before" in resumed.stdout
    # Job 1 resumed from its own checkpoint, at the epoch it had saved.
    assert result(sweep_dir / "1")["resumed_from"] == str(sweep_dir / "1" / "checkpoints" / "last.ckpt")
    assert f"Restoring states from the checkpoint path at {sweep_dir / '1' / 'checkpoints' / 'last.ckpt'}" \
        in resumed.stderr
    assert killed_at < 4
    # Jobs 2 and 3 never started: they start now.
    assert "resumed_from" not in result(sweep_dir / "2") and "resumed_from" not in result(sweep_dir / "3")
    for job in "0123":
        ours, theirs = result(sweep_dir / job), result(reference / job)
        assert ours["status"] == "ok" and ours["metrics"] == theirs["metrics"] and ours["value"] == theirs["value"], job
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4 and not (sweep_dir / "sweep.lock").exists()
    assert "resume_sweep" not in summary[0]


@pytest.mark.slow  # three 4-trial searches, about 50 s
def test_a_killed_optuna_search_keeps_its_trials_and_resumes_the_interrupted_one(tmp_path):
    import optuna

    reference = tmp_path / "reference"
    assert train_m(*SEARCH, f"hydra.sweep.dir={reference}").returncode == 0

    sweep_dir = tmp_path / "search"
    kill_when(sweep_dir, SEARCH, "0/result.json", "1/checkpoints/last.ckpt")
    job0 = (sweep_dir / "0" / "result.json").read_bytes()
    resumed = train_m(*SEARCH, f"resume_sweep={sweep_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    study = optuna.load_study(study_name="classifier", storage=f"sqlite:///{sweep_dir}/optuna.db")
    states = [t.state for t in study.trials]
    # Trial 1 was running when the search was killed: marked failed (interrupted) and asked
    # again as trial 2 with the same parameters; n_trials=4 is the total of ended trials.
    assert states == [TrialState.COMPLETE, TrialState.FAIL, *[TrialState.COMPLETE] * 3]
    assert study.trials[1].user_attrs["interrupted"] and study.trials[2].params == study.trials[1].params
    assert (sweep_dir / "0" / "result.json").read_bytes() == job0
    assert result(sweep_dir / "2")["resumed_from"] == str(sweep_dir / "1" / "checkpoints" / "last.ckpt")
    assert json.loads((sweep_dir / "1" / "continued.json").read_text())["continued_in"] == "2"
    # The finished and the resumed trial end exactly as in the uninterrupted search.
    assert result(sweep_dir / "0")["metrics"] == result(reference / "0")["metrics"]
    assert result(sweep_dir / "2")["metrics"] == result(reference / "1")["metrics"]
    assert study.trials[2].value == result(reference / "1")["value"]
    # The summary lists each trial once: 0, 2, 3 and 4 (1 continued as 2).
    rows = (sweep_dir / "summary.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == ["0", "2", "3", "4"]


def test_resume_refuses_a_different_grid_a_non_sweep_and_a_sweep_in_progress(tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = ["model=classifier", *COMMON, "trainer.max_epochs=1", "model.net.hidden_size=8"]
    assert train_m(*grid, f"hydra.sweep.dir={sweep_dir}").returncode == 0
    before = sorted(p.name for p in sweep_dir.rglob("*"))

    other = train_m(*grid[:-1], "model.net.hidden_size=8,32", "model.net.num_layers=1", f"resume_sweep={sweep_dir}")
    assert other.returncode == 1
    message = other.stderr.strip().splitlines()[-1]
    assert f"resume_sweep: {str(sweep_dir)!r} is a different sweep:" in message
    assert "override 'model.net.hidden_size=8,32' is new" in message
    assert "override 'model.net.num_layers=1' is new" in message
    assert "override 'model.net.hidden_size=8' is missing" in message

    elsewhere = train_m(*grid, f"resume_sweep={sweep_dir}", f"hydra.sweep.dir={tmp_path / 'other'}")
    assert elsewhere.returncode == 1 and "give resume_sweep alone" in elsewhere.stderr
    assert not (tmp_path / "other").exists()

    not_a_sweep = train_m(*grid, f"resume_sweep={sweep_dir / '0'}")
    assert not_a_sweep.returncode == 1
    assert "expected the directory of a sweep (it holds sweep.json" in not_a_sweep.stderr

    (sweep_dir / "sweep.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                      "since": "now"}))
    locked = train_m(*grid, f"resume_sweep={sweep_dir}")
    assert locked.returncode == 1
    assert f"is being run by process {os.getpid()}" in locked.stderr
    (sweep_dir / "sweep.lock").unlink()
    assert sorted(p.name for p in sweep_dir.rglob("*")) == before  # nothing ran, nothing written


@pytest.mark.slow  # three sweeps, about 25 s; framework/test_jobs.py checks the same decisions in process
def test_failed_jobs_keep_their_result_unless_rerun_failed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    sweep_dir = tmp_path / "sweep"
    grid = ["model=char_rnn", "data=chars", "data.corpus_chars=4000", "data.seq_len=16", "data.windows_per_epoch=64",
            "model.net.hidden_size=8", "model.net.num_layers=1", "trainer.max_epochs=1", "model.sample_max_new_tokens=5",
            *COMMON[3:], f"data.path=null,{corpus}"]
    assert train_m(*grid, f"hydra.sweep.dir={sweep_dir}").returncode == 0
    assert result(sweep_dir / "1")["status"] == "failed"  # the file does not exist yet
    corpus.write_text("to be or not to be,\nthat is the question.\n" * 200)
    first = {job: (sweep_dir / job / "result.json").read_bytes() for job in "01"}

    kept = train_m(*grid, f"resume_sweep={sweep_dir}")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert {job: (sweep_dir / job / "result.json").read_bytes() for job in "01"} == first
    assert "job 1 failed before" in kept.stdout and "rerun_failed=true runs it again" in kept.stdout

    rerun = train_m(*grid, f"resume_sweep={sweep_dir}", "rerun_failed=true")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (sweep_dir / "0" / "result.json").read_bytes() == first["0"]
    assert result(sweep_dir / "1")["status"] == "ok"


@pytest.mark.parametrize("launcher", [pytest.param("joblib", marks=pytest.mark.slow),
                                      pytest.param("submitit_local", marks=pytest.mark.slow), "slurm requeue"])
def test_every_launcher_resumes_the_job_a_kill_left_at_an_epoch_end(tmp_path, launcher):
    # The state a SIGKILL after job 1's first epoch leaves: job 0 finished, job 1 with
    # last.ckpt at epoch 0 and no result. Made from a finished sweep, so the resumed job 1
    # must end exactly where it ended then.
    grid = ["model=classifier", *COMMON, "trainer.max_epochs=2", "model.net.hidden_size=8,16"]
    sweep_dir = tmp_path / "sweep"
    assert train_m(*grid, f"hydra.sweep.dir={sweep_dir}").returncode == 0
    job0, job1 = (sweep_dir / "0" / "result.json").read_bytes(), result(sweep_dir / "1")
    checkpoints = sweep_dir / "1" / "checkpoints"
    shutil.copy(checkpoints / "epoch_000.ckpt", checkpoints / "last.ckpt")
    for path in [*checkpoints.glob("epoch_00[1-9].ckpt"), sweep_dir / "1" / "result.json", sweep_dir / "summary.csv"]:
        path.unlink()

    if launcher == "slurm requeue":
        # SLURM requeued the job (time limit, pre-emption): the same job, with SLURM_RESTART_COUNT set.
        proc = subprocess.run([sys.executable, "scripts/train.py", "-m", *grid, f"hydra.sweep.dir={sweep_dir}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=400,
                              env={**ENV, "SLURM_RESTART_COUNT": "1"})
    else:
        extra = ["hydra.launcher.timeout_min=10"] if launcher == "submitit_local" else []
        proc = train_m(*grid, f"hydra/launcher={launcher}", *extra, f"resume_sweep={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep_dir / "0" / "result.json").read_bytes() == job0
    resumed = result(sweep_dir / "1")
    assert resumed["resumed_from"] == str(checkpoints / "last.ckpt")
    assert resumed["metrics"] == job1["metrics"] and resumed["value"] == job1["value"]
    assert len((sweep_dir / "summary.csv").read_text().splitlines()) == 3
