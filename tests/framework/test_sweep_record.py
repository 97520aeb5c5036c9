"""rnnlab.sweeps.SweepRecord in process: the record a sweep writes when it starts, the checks
a resume passes or fails, and the lock a running sweep holds. (The scripts' sweeps, killed
and resumed as processes, are in sweeps/test_resume_sweeps.py.)"""

import json
import os
import socket
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from rnnlab import sweeps
from rnnlab.errors import ConfigError

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.rnnlab_sweepers.optuna.ResumableOptunaSweeper"


def hydra_config(sweep_dir, overrides, resume=None, sweeper=BASIC, params=None, n_trials=None):
    """The parts of the config Hydra hands a callback that SweepRecord reads."""
    return OmegaConf.create({
        "resume_sweep": None if resume is None else str(resume),
        "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": list(overrides)},
                  "sweeper": {"_target_": sweeper, "params": params, "n_trials": n_trials}},
    })


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


GRID = ["model.net.hidden_size=8,16", "trainer.max_epochs=2"]


def test_a_sweep_records_its_grid_when_it_starts_and_holds_its_lock_until_it_ends(tmp_path):
    sweep_dir = tmp_path / "sweep"
    record = sweeps.SweepRecord()
    record.on_multirun_start(hydra_config(sweep_dir, [*GRID, "rerun_failed=true"]))
    written = json.loads((sweep_dir / "sweep.json").read_text())
    assert written["overrides"] == GRID  # without the resume switches
    assert written["sweeper"] == BASIC and written["search_space"] == {} and written["n_trials"] is None
    assert "started" in written
    lock = json.loads((sweep_dir / "sweep.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
    record.on_multirun_end(hydra_config(sweep_dir, GRID))
    assert not (sweep_dir / "sweep.lock").exists() and record.lock is None
    record.on_multirun_end(hydra_config(sweep_dir, GRID))  # a second end is harmless


def test_an_optuna_search_records_its_search_space_and_trials(tmp_path):
    params = {"model.net.dropout": "interval(0.0, 0.5)", "model.net.hidden_size": "choice(32, 64)"}
    sweeps.SweepRecord().on_multirun_start(hydra_config(tmp_path, ["model=char_rnn"], sweeper=OPTUNA,
                                                        params=params, n_trials=6))
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["search_space"] == params and written["sweeper"] == OPTUNA and written["n_trials"] == 6


def test_a_resume_of_the_same_sweep_is_accepted_and_keeps_the_record(tmp_path):
    first = sweeps.SweepRecord()
    first.on_multirun_start(hydra_config(tmp_path, GRID))
    first.on_multirun_end(hydra_config(tmp_path, GRID))
    written = json.loads((tmp_path / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps({**written, "started": "2026-01-01 00:00:00"}))
    before = (tmp_path / "sweep.json").read_text()
    again = sweeps.SweepRecord()
    again.on_multirun_start(hydra_config(tmp_path, [*GRID, f"resume_sweep={tmp_path}"], resume=tmp_path))
    assert (tmp_path / "sweep.json").read_text() == before  # the first start's record, its time too
    assert again.lock == tmp_path / "sweep.lock" and again.lock.is_file()
    again.on_multirun_end(hydra_config(tmp_path, GRID))


def test_a_resume_of_a_different_sweep_lists_every_difference_and_writes_nothing(tmp_path):
    old_params = {"model.net.dropout": "interval(0.0, 0.5)", "model.net.num_layers": "choice(1, 2)"}
    record = sweeps.SweepRecord()
    record.on_multirun_start(hydra_config(tmp_path, GRID, sweeper=OPTUNA, params=old_params))
    record.on_multirun_end(hydra_config(tmp_path, GRID))
    before = (tmp_path / "sweep.json").read_text()
    new_params = {"model.net.dropout": "interval(0.0, 0.3)", "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}
    changed = hydra_config(tmp_path, ["model.net.hidden_size=8,16", "trainer.max_epochs=3"], resume=tmp_path,
                           params=new_params)
    with pytest.raises(ConfigError) as err:
        sweeps.SweepRecord()._start(changed)
    assert str(err.value) == (
        f"resume_sweep: {str(tmp_path)!r} is a different sweep: override 'trainer.max_epochs=3' is new; "
        "override 'trainer.max_epochs=2' is missing; "
        f"sweeper {BASIC} (the sweep ran {OPTUNA}); "
        "search space model.net.dropout: interval(0.0, 0.3) (the sweep had interval(0.0, 0.5)); "
        "search space model.net.num_layers: None (the sweep had choice(1, 2)); "
        "search space model.optimizer.lr: tag(log, interval(1e-4, 1e-2)) (the sweep had None). "
        "Resume it with its own overrides: model.net.hidden_size=8,16 trainer.max_epochs=2")
    assert (tmp_path / "sweep.json").read_text() == before and not (tmp_path / "sweep.lock").exists()


def test_a_resume_names_what_is_wrong_with_the_directory_it_was_given(tmp_path, capsys):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"got '.*missing', which does not exist$"):
        sweeps.SweepRecord()._start(hydra_config(missing, GRID, resume=missing))
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"which has no sweep\.json$"):
        sweeps.SweepRecord()._start(hydra_config(tmp_path / "empty", GRID, resume=tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"but hydra\.sweep\.dir is '.*other'; give resume_sweep alone"):
        sweeps.SweepRecord()._start(hydra_config(tmp_path / "other", GRID, resume=tmp_path / "empty"))
    # Through Hydra's hook, a refusal is one line and exit status 1 (Hydra would only warn).
    with pytest.raises(SystemExit) as exit_:
        sweeps.SweepRecord().on_multirun_start(hydra_config(tmp_path / "empty", GRID, resume=tmp_path / "empty"))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: resume_sweep: expected the directory of a sweep") and err.count("\n") == 1


def test_the_lock_refuses_a_live_holder_and_takes_over_from_a_dead_one_on_this_host(tmp_path):
    lock = tmp_path / "sweep.lock"
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": host, "since": "2026-01-01 00:00:00"}))
    with pytest.raises(sweeps.SweepLocked, match=rf"is being run by process {os.getpid()} on {host} since "
                                                 r"2026-01-01 00:00:00; wait for it to end"):
        sweeps._lock(tmp_path)
    lock.write_text(json.dumps({"pid": dead_pid(), "host": "another-host", "since": "then"}))
    with pytest.raises(sweeps.SweepLocked, match="on another-host"):  # its process cannot be checked from here
        sweeps._lock(tmp_path)
    for left in ({"pid": dead_pid(), "host": host}, {"pid": "not a pid", "host": host}):
        lock.write_text(json.dumps(left))
        assert sweeps._lock(tmp_path) == lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        lock.unlink()
    lock.write_text("{half a record")  # unreadable: its holder cannot be known, so it is not taken
    with pytest.raises(sweeps.SweepLocked, match="by process None on None"):
        sweeps._lock(tmp_path)


def test_a_process_is_alive_only_while_it_runs():
    assert sweeps._alive(os.getpid())
    assert not sweeps._alive(dead_pid())
    assert not sweeps._alive(None) and not sweeps._alive(str(os.getpid()))
    assert sweeps._alive(1)  # another user's live process (permission denied to signal it, or ours as root)


def test_a_job_continued_elsewhere_leaves_a_note_and_loses_its_result(tmp_path):
    other, job = tmp_path / "3", tmp_path / "7"
    (other / "checkpoints").mkdir(parents=True)
    job.mkdir()
    (other / "result.json").write_text(json.dumps({"status": "interrupted"}))
    sweeps.mark_continued(other / "checkpoints" / "last.ckpt", job, ["model.net.hidden_size=8"])
    assert not (other / "result.json").exists()
    assert json.loads((other / "continued.json").read_text()) == {"continued_in": "7",
                                                                  "overrides": ["model.net.hidden_size=8"]}
    (job / "checkpoints").mkdir()
    (job / "result.json").write_text("{}")
    sweeps.mark_continued(job / "checkpoints" / "last.ckpt", job, [])  # its own checkpoint: nothing to mark
    assert (job / "result.json").exists() and not (job / "continued.json").exists()


def test_the_resume_switches_are_not_part_of_a_sweeps_overrides():
    overrides = ["+resume_sweep=/runs/s", "rerun_failed=true", "~rerun_failed",
                 "++resume_sweep=/runs/lr=0.1",  # a sweep directory named after an override
                 "model.net.hidden_size=8,16", "tag=resume_sweep", "+trainer.max_time=00:00:01:00"]
    assert sweeps.sweep_overrides(overrides) == ["model.net.hidden_size=8,16", "tag=resume_sweep",
                                                  "+trainer.max_time=00:00:01:00"]
