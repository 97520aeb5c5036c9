"""Sweeps that survive a crash: resume a killed multirun with ``resume_sweep=<sweep dir>``.

Every multirun writes ``<sweep dir>/sweep.json`` when it starts (the command's overrides and
the search space) and holds ``<sweep dir>/sweep.lock`` while it runs (:class:`SweepRecord`,
a Hydra callback registered in ``conf/hydra/default.yaml``). The same command plus
``resume_sweep=<sweep dir>`` runs the sweep again in that directory:

- a job whose ``result.json`` says ``ok`` is not run again; its recorded result stands;
- a job that was killed or interrupted resumes from its own ``checkpoints/last.ckpt``
  (or starts, if it had saved none);
- a job that failed keeps its failed result unless ``rerun_failed=true``, which runs it
  again from the start.

A directory without ``sweep.json``, a different grid or search space, or a sweep that another
process is running (its lock is held by a live process) is refused before any job runs.

Optuna searches keep their study in SQLite in the sweep directory (the ``hparams_search``
configs set ``storage``); the ``rnnlab_optuna`` sweeper (``hydra_plugins``) continues such a
study: ``n_trials`` is the search's total, a trial that was running when the search was
killed is asked again with the same parameters and resumes from its job's checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import ConfigError
from .run_checks import RESULT_FILE

SWEEP_RECORD = "sweep.json"
SWEEP_LOCK = "sweep.lock"
# Overrides that steer a resume and are not part of the sweep itself.
RESUME_KEYS = ("resume_sweep", "rerun_failed")


def sweep_overrides(overrides: list[str]) -> list[str]:
    """A command's task overrides without the resume switches."""
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] not in RESUME_KEYS]


def _sweep_record(config: DictConfig) -> dict:
    """What identifies a sweep: its overrides (the grid) and its sweeper's search space."""
    overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    sweeper = config.hydra.sweeper
    params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper.get("params") else {}
    return {"overrides": sweep_overrides(overrides), "sweeper": str(sweeper.get("_target_")),
            "search_space": {str(k): str(v) for k, v in (params or {}).items()},
            "n_trials": sweeper.get("n_trials")}


def _differences(old: dict, new: dict) -> list[str]:
    """The differences between two sweep records, one phrase each."""
    lines = []
    old_o, new_o = old["overrides"], new["overrides"]
    lines += [f"override {o!r} is new" for o in new_o if o not in old_o]
    lines += [f"override {o!r} is missing" for o in old_o if o not in new_o]
    if old["sweeper"] != new["sweeper"]:
        lines.append(f"sweeper {new['sweeper']} (the sweep ran {old['sweeper']})")
    for key in sorted(set(old["search_space"]) | set(new["search_space"])):
        a, b = old["search_space"].get(key), new["search_space"].get(key)
        if a != b:
            lines.append(f"search space {key}: {b} (the sweep had {a})")
    return lines


class SweepLocked(RuntimeError):
    """Another live process is running the sweep."""


def _lock(sweep_dir: Path) -> Path:
    """Create ``sweep.lock`` for this process; refuse if a live process holds it (a lock left
    by a process that died, on this host, is taken over)."""
    path = sweep_dir / SWEEP_LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                path.unlink(missing_ok=True)  # its process is gone: a killed sweep
                continue
            raise SweepLocked(f"sweep {str(sweep_dir)!r} is being run by process {holder.get('pid')} on "
                              f"{holder.get('host')} since {holder.get('since')}; wait for it to end, or delete "
                              f"{str(path)!r} if that process no longer exists") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise SweepLocked(f"could not take the lock {str(path)!r}")


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SweepRecord(Callback):
    """Hydra callback: record a sweep when it starts, check a resumed one against its record,
    and hold the sweep's lock until it ends."""

    def __init__(self):
        self.lock: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and goes on: a refusal ends the
        # command here, with one line and exit status 1 (as rnnlab.errors.report_errors does).
        try:
            self._start(config)
        except (ConfigError, SweepLocked) as err:
            print(f"Error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        record = _sweep_record(config)
        resume = config.get("resume_sweep")
        record_path = sweep_dir / SWEEP_RECORD
        if resume is not None:
            if Path(str(resume)).resolve() != sweep_dir.resolve():
                raise ConfigError("resume_sweep", f"resumes the sweep in {str(resume)!r}, but hydra.sweep.dir is "
                                                  f"{str(sweep_dir)!r}; give resume_sweep alone")
            if not record_path.is_file():
                what = "does not exist" if not sweep_dir.exists() else f"has no {SWEEP_RECORD}"
                raise ConfigError("resume_sweep", f"expected the directory of a sweep (it holds {SWEEP_RECORD}, "
                                                  f"written when the sweep started), got {str(resume)!r}, which {what}")
            old = json.loads(record_path.read_text())
            differences = _differences(old, record)
            if differences:
                raise ConfigError("resume_sweep", f"{str(resume)!r} is a different sweep: " + "; ".join(differences)
                                  + f". Resume it with its own overrides: {' '.join(old['overrides'])}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.lock = _lock(sweep_dir)
        if resume is None:
            record["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
            record_path.write_text(json.dumps(record, indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.unlink(missing_ok=True)
            self.lock = None


# ------------------------------------------------------------- one job of a resumed sweep
class JobMismatch(ConfigError):
    """A resumed sweep's job whose directory holds another job (its overrides differ); the
    directory is left as it is."""


class JobAlreadyDone(Exception):
    """A job of a resumed sweep that has nothing to do; ``result`` is its recorded result."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _job_overrides(job_dir: Path) -> list[str] | None:
    path = job_dir / ".hydra" / "overrides.yaml"
    return sweep_overrides(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else None


def prepare_resumed_job(cfg: DictConfig, overrides: list[str]) -> Path | None:
    """Decide what a job of a resumed sweep (``resume_sweep`` set) does, before it trains.

    Raises :class:`JobAlreadyDone` for a job that finished (or failed, without
    ``rerun_failed``). Otherwise sets ``cfg.ckpt_path`` to the checkpoint it resumes from and
    returns that path: its own ``last.ckpt``, or, for a trial an Optuna search asks again,
    the ``last.ckpt`` of the interrupted job with the same overrides. None: it starts afresh.
    """
    job_dir = Path(cfg.paths.output_dir)
    mine = sweep_overrides(overrides)
    result_path = job_dir / RESULT_FILE
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    recorded = _job_overrides(job_dir) if result is None else sweep_overrides(result["overrides"])
    if recorded is not None and recorded != mine:
        raise JobMismatch("resume_sweep", f"job {job_dir.name} of the sweep ran {recorded}, this job is {mine}; "
                                          "resume the sweep with the overrides it was started with")
    status = (result or {}).get("status")
    if status == "ok":
        raise JobAlreadyDone(f"job {job_dir.name} finished before; its result stands", result)
    if status == "failed" and not cfg.get("rerun_failed", False):
        raise JobAlreadyDone(f"job {job_dir.name} failed before ({result.get('error')}); its result stands "
                             "(rerun_failed=true runs it again)", result)
    checkpoints = job_dir / "checkpoints"
    if status == "failed":  # run again from the start; the failed attempt's checkpoints are kept aside
        if checkpoints.is_dir():
            shutil.rmtree(job_dir / "checkpoints.failed", ignore_errors=True)
            checkpoints.rename(job_dir / "checkpoints.failed")
        return None
    last = checkpoints / "last.ckpt"
    if not last.is_file():  # a job that never ran before may be an Optuna trial asked again
        last = _interrupted_sibling(job_dir, mine) if recorded is None else None
    if last is None:
        return None
    with open_dict(cfg):
        cfg.ckpt_path = str(last)
    return last


def _interrupted_sibling(job_dir: Path, overrides: list[str]) -> Path | None:
    """The last.ckpt of another job of the sweep with these overrides that never finished (an
    Optuna trial that was running when the search was killed, asked again under a new number)."""
    for other in sorted(p for p in job_dir.parent.iterdir() if p.is_dir() and p != job_dir):
        last = other / "checkpoints" / "last.ckpt"
        result_path = other / RESULT_FILE
        status = json.loads(result_path.read_text()).get("status") if result_path.is_file() else None
        continued = (other / "continued.json").is_file()  # already taken over by another job
        if last.is_file() and status in (None, "interrupted") and not continued and _job_overrides(other) == overrides:
            return last
    return None


def mark_continued(ckpt_path: Path, job_dir: Path, overrides: list[str]) -> None:
    """Once a job resumes from another job's checkpoint, record in that job's directory that
    it continues there (``continued.json``): the summary then lists the trial once."""
    other = ckpt_path.parent.parent
    if other == job_dir:
        return
    (other / RESULT_FILE).unlink(missing_ok=True)
    (other / "continued.json").write_text(json.dumps({"continued_in": job_dir.name, "overrides": overrides}))

