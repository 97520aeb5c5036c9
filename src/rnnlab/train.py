"""Training: :func:`train` builds the data, task, callbacks, loggers and trainer from a Hydra
config, fits, tests the best checkpoint and returns the metric a sweeper optimises;
:func:`run` wraps it for ``scripts/train.py`` (as lightning-hydra-template's ``task_wrapper``
wraps its ``train``): threads, the job's ``result.json``, sweeps that go on after a failure,
and resumes that leave a run directory as it was when they are refused. Tests call both
with configs composed from ``conf/``.

Everything that can be checked is checked before anything is built or trained
(:mod:`rnnlab.run_checks`), and the checkpoint directories must be writable. Every run also
gets rnnlab's reliability callbacks (see :mod:`rnnlab.callbacks`) and its atomic,
weights-only checkpoint reader and writer (:class:`rnnlab.checkpoints.AtomicCheckpointIO`).

Resuming: ``ckpt_path=last`` resumes the run in ``hydra.run.dir`` from its
``checkpoints/last.ckpt`` (saved at every epoch end), so a crashed or interrupted run
continues with the command that started it plus ``hydra.run.dir=<run dir> ckpt_path=last``,
and ends with the metrics and weights an uninterrupted run would have. A killed sweep
continues with its command plus ``resume_sweep=<sweep dir>``: each job decides what it has
left to do (:func:`rnnlab.sweeps.prepare_resumed_job`), and so does a job SLURM requeued.
Tracker runs (MLflow, W&B: :mod:`rnnlab.trackers`) continue with the run they belong to.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, WeightAveraging
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard.summary import hparams as hparams_summary

from . import checks
from .callbacks import BudgetSchedule, StepSeed, StopOnInterrupt, StopOnNonFiniteLoss
from .checkpoints import AtomicCheckpointIO, check_resumable, check_same_task, check_writable, describe_difference
from .checkpoints import load_checkpoint
from .config import RESUME_CONFIG_SUBDIR, class_path, flatten, instantiate_node, target_class
from .errors import ConfigError, first_line
from .sweeps import JobAlreadyDone, JobMismatch, mark_continued, prepare_resumed_job, sweep_overrides
from .run_checks import (RESULT_FILE, JobSkipped, RunAlreadyFinished, check_arguments, check_finished, check_launch,
                         check_batches, check_seed, check_trainer, cpu_processes, resume_path)
from .tasks.base import RNNTask, plain
from .trackers import check_trackers, continue_runs, finish_runs, log_params, record_checkpoints, remember_runs

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at an epoch end, after its checkpoint was saved."""


def instantiate_group(group: DictConfig | None, key: str = "") -> list:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger`` (``key``,
    which errors name); entries set to null are skipped (that is how a config switches one off)."""
    if not group:
        return []
    return [instantiate_node(entry, f"{key}.{name}" if key else str(name)) for name, entry in group.items()
            if entry is not None and "_target_" in entry]


# The network sizes the data decides; model configs leave them null.
DATA_SIZES = ("input_size", "num_classes", "num_tags", "vocab_size")


def fill_model_from_data(model_cfg: DictConfig, datamodule: L.LightningDataModule, source: str = "config") -> None:
    """Put the values only the data knows into the model config: what the data module's
    ``model_settings()`` returns (called after ``setup``), such as ``{"net.input_size": 12,
    "net.num_classes": 9}`` or a character model's vocabulary.

    A key left null in the model config is filled in; a key set explicitly must agree
    with the data. ``source`` names where the model config came from in the error that
    lists every disagreement: "config" (training) or "checkpoint" (eval). A size the
    network needs that is still null afterwards is refused, naming the data module.
    """
    settings = getattr(datamodule, "model_settings", None)
    differences = []
    for key, value in (settings() if settings is not None else {}).items():
        current = OmegaConf.select(model_cfg, key, default="__missing__")
        if current == "__missing__":
            continue
        if current is None:
            with open_dict(model_cfg):
                OmegaConf.update(model_cfg, key, value)
        elif current != value:
            differences.append(describe_difference(f"model.{key}", current, value, source, "data"))
    if differences and source == "config":
        raise ConfigError("model", "does not match the data: " + "; ".join(differences)
                          + "; set these keys to null to take them from the data")
    if differences:
        raise ConfigError("data", f"does not match the {source}'s model: " + "; ".join(differences))
    net = model_cfg.get("net") or {}
    missing = [f"net.{key}" for key in DATA_SIZES if key in net and net[key] is None]
    if {"net.input_size", "net.vocab_size"} <= set(missing):  # a network of features or of token ids
        missing[missing.index("net.input_size")] = "net.input_size (features) or net.vocab_size (token ids)"
        missing.remove("net.vocab_size")
    elif "input_size" in net and "vocab_size" in net:  # one of them set: the other one stays null
        missing = [key for key in missing if key not in ("net.input_size", "net.vocab_size")]
    if missing:
        data_name = class_path(type(datamodule))
        given = sorted(settings()) if settings is not None else None
        keys = [key.split(" ")[0] for key in missing]  # the first of alternatives, for the suggestion
        raise ConfigError("model", f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} null and the data "
                          f"({data_name}) does not set {'it' if len(missing) == 1 else 'them'}: "
                          + (f"its model_settings() returns only {given}" if given is not None
                             else "it defines no model_settings()")
                          + f"; return {{{', '.join(repr(k) + ': ...' for k in keys)}}} from model_settings(), "
                          "or set " + ", ".join(f"model.{k}=<value>" for k in keys))


def flat_hparams(cfg: DictConfig) -> dict:
    """The run's config flattened to {"model.net.hidden_size": 64, ...} for the HParams tab."""
    flat = {}
    for group in ("model", "data", "trainer"):
        if cfg.get(group) is not None:
            flat.update(flatten(OmegaConf.to_container(cfg[group], resolve=True), group))
    flat = {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}
    if cfg.get("seed") is not None:
        flat["seed"] = cfg.seed
    if HydraConfig.initialized():
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)  # ${...} stays text
        flat["overrides"] = " ".join(overrides) or "(none)"
    return flat


def log_hparams(loggers: list[Logger], params: dict, metric_names: list[str]) -> None:
    """Record the run's hyperparameters at the start of training.

    TensorBoard's HParams tab shows, for each run, the last value of each named scalar
    tag, so the final metrics appear there without logging any placeholder values.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Lightning's own log_hyperparams(params, metrics) would also write each metric
            # as a scalar at step 0, a false point on every curve; write the summaries only.
            exp, ssi, sei = hparams_summary(params, {name: 0.0 for name in metric_names})
            for summary in (exp, ssi, sei):
                logger.experiment.file_writer.add_summary(summary)
        else:
            log_params(logger, params)


def data_record(data_cfg: DictConfig, datamodule: L.LightningDataModule) -> dict:
    """The data config a checkpoint keeps: the run's, with the values the data module settled
    on for its own arguments (a relative ``path`` made absolute), so eval and analysis find
    the same data from any directory."""
    record = plain(data_cfg)
    settled = getattr(datamodule, "hparams", {})
    return {key: settled.get(key, value) if key in settled else value for key, value in record.items()}


def train(cfg: DictConfig, before_fit: Callable[[], None] | None = None) -> tuple[dict[str, float], float]:
    """Fit and test as configured; return (all final metrics, the optimized metric's value).

    ``before_fit`` is called once every check has passed, right before training starts
    (the first moment the run directory is written to).
    """
    start = time.perf_counter()
    reuse_heap(cfg.get("heap_reuse_mb"))
    check_launch(cfg)
    seed = check_seed(cfg)
    check_trainer(cfg)
    for group in ("optimizer", "scheduler"):
        check_arguments(cfg.model.get(group), f"model.{group}")
    check_trackers(cfg.get("logger"))
    ckpt_path = resume_path(cfg)
    # Read (and refuse, if it holds code, is damaged or is another task's) before building anything.
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    task_cls = target_class(cfg.model, "model")
    if checkpoint is not None and task_cls is not None:
        check_same_task(checkpoint, task_cls, ckpt_path)
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)  # quiet: a refused resume writes no log line

    datamodule: L.LightningDataModule = instantiate_node(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if getattr(task_cls, "BATCH", None) is not None:  # an RNNTask: its batch contract
        check_batches(cfg, task_cls, datamodule)
    fill_model_from_data(cfg.model, datamodule)
    task: RNNTask = instantiate_node(cfg.model, "model")
    task.data_config = data_record(cfg.data, datamodule)
    task.run_config = {"trainer": plain(cfg.trainer), "seed": seed}
    schedule = (cfg.get("callbacks") or {}).get("budget_schedule")
    if schedule is not None:  # ties the learning rate to the trainer's budget: recorded for resumes
        task.run_config["budget_schedule"] = plain(schedule)
    if checkpoint is not None:
        check_resumable(checkpoint, task, ckpt_path)
        check_finished(checkpoint, cfg, ckpt_path)
        del checkpoint  # Lightning reads it again, through AtomicCheckpointIO

    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is not None and entry.get("dirpath"):
            check_writable(entry.dirpath, f"callbacks.{name}.dirpath")
    interrupt = StopOnInterrupt()
    callbacks = [*instantiate_group(cfg.get("callbacks"), "callbacks"), StopOnNonFiniteLoss(), interrupt]
    # trainer.enable_progress_bar=false (or enable_model_summary=false) is enough on its own:
    # the configured bar or summary callback would make Lightning refuse the combination.
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ModelSummary)]
    if seed is not None:
        callbacks.append(StepSeed(seed))
    # A schedule sets the step's learning rate at batch start, before LearningRateMonitor
    # records it there (Lightning calls callbacks in list order).
    callbacks.sort(key=lambda cb: not isinstance(cb, BudgetSchedule))
    output_dir = cfg.paths.output_dir if "paths" in cfg else None
    if ckpt_path is not None and output_dir is not None:
        continue_runs(cfg.get("logger"), output_dir)  # a resumed run goes on in its own tracker runs
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                          plugins=[AtomicCheckpointIO()])
    if before_fit is not None:
        before_fit()

    if trainer.is_global_zero:
        if output_dir is not None:
            remember_runs(cfg.get("logger"), loggers, output_dir)
        stem = task.monitor.split("/", 1)[1]
        log_hparams(loggers, flat_hparams(cfg),
                    [task.monitor, f"{task.monitor}_best", "val/loss", f"test/{stem}", "test/loss"])

    output_dir = output_dir or trainer.default_root_dir
    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path and str(ckpt_path), weights_only=True)
    if interrupt.stopped_epoch is not None:
        raise TrainingInterrupted(f"stopped after epoch {interrupt.stopped_epoch} (step {trainer.global_step}), "
                                  f"whose checkpoints are saved in {output_dir}/checkpoints; resume with the same "
                                  f"command plus hydra.run.dir={output_dir} ckpt_path=last")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor == task.monitor), "")
    if trainer.is_global_zero:
        # the newest checkpoint: the one-file "last" callback (monitor null) or a save_last=true one
        last = next((cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks
                     if cb.last_model_path or (cb.monitor is None and cb.best_model_path)), "")
        record_checkpoints(loggers, {"best": best, "last": last})

    if cfg.get("test", True):
        # Lightning restores callbacks for the test too, and a weight average's callback
        # (callbacks=[default,ema]) would load the checkpoint's trained weights over its average:
        # the test reads the average, as validation did.
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, WeightAveraging)]
        if not best and cfg.get("train", True) and not trainer.fast_dev_run:
            print("No best checkpoint was saved; testing the weights in memory.")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})

    name = cfg.get("optimized_metric")
    if name == f"{task.monitor}_best" and name not in metrics and task.best_so_far() is not None:
        metrics[name] = task.best_so_far()  # a resume that only had the test left to run
    if name is not None and name not in metrics:
        raise ValueError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = metrics.get(name) if name is not None else None

    elapsed = time.perf_counter() - start
    lines = [f"Output directory: {output_dir}", f"Wall time: {elapsed:.1f} s", "Final metrics:"]
    lines += [f"  {key:<20} {metrics[key]:.4f}" for key in sorted(metrics) if key.startswith(("train/", "val/", "test/"))]
    if name is not None:
        lines.append(f"Optimized metric {name}: {value:.4f}")
    # Through logging, so Hydra sends it to the console and to <run>/train.log alike.
    if trainer.is_global_zero:
        log.info("\n".join(lines))
    metrics["time/wall_s"] = elapsed
    finish_runs()
    return metrics, value


# ------------------------------------------------------ the job around train()
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def reuse_heap(megabytes: int | None) -> bool:
    """Have glibc serve allocations up to ``megabytes`` from the process's heap and keep the
    freed ones there (``mallopt``: M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); return whether it
    was set. None: glibc's defaults; elsewhere than Linux with glibc: nothing to set.

    Why: a training step allocates and frees the same tensors of several megabytes every step.
    By default glibc maps fresh pages for each (or, once it has raised its threshold, returns
    the freed heap top to the system), so each step's first writes to them fault page by page
    into the kernel: a char-model step under bfloat16 autocast took 206 ms in a fresh process
    and 151-156 ms with 256 MB kept (float32: 332 and 309 ms), measured on 2 cores here. The
    cost is memory the process keeps after freeing it, up to its peak use.
    """
    if megabytes is None:
        return False
    if not checks.is_int(megabytes) or megabytes < 1:
        raise ConfigError("heap_reuse_mb", f"expected an int >= 1 (megabytes) or null, got {megabytes!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    size = megabytes << 20
    return bool(libc.mallopt(M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(M_TRIM_THRESHOLD, size))


def set_threads(cfg: DictConfig) -> None:
    """Give each of n parallel jobs (joblib launcher), or each of n CPU DDP processes, 1/n of
    the cores, unless ``threads`` is set."""
    threads = cfg.get("threads")
    if threads is None and HydraConfig.initialized():
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
        if isinstance(n_jobs, int) and n_jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
    processes = cpu_processes(cfg)
    if threads is None and processes > 1:
        threads = max(1, (os.cpu_count() or 1) // processes)
    if threads is not None:
        torch.set_num_threads(int(threads))


class _ResumedConfig:
    """Hydra's record of a resuming run (``.hydra/``), written aside by Hydra
    (``hydra.output_subdir`` is ``.hydra/resume`` when ``ckpt_path`` is set, see
    ``conf/train.yaml``): moved over ``.hydra/`` once the resume is accepted, removed if it
    is refused, so the run directory always describes what the run did."""

    def __init__(self):
        self.staged = None
        if HydraConfig.initialized() and HydraConfig.get().output_subdir == RESUME_CONFIG_SUBDIR:
            self.staged = Path(HydraConfig.get().runtime.output_dir) / RESUME_CONFIG_SUBDIR

    @rank_zero_only
    def accept(self) -> None:
        if self.staged is not None and self.staged.is_dir():
            for path in self.staged.iterdir():
                os.replace(path, self.staged.parent / path.name)
            self.staged.rmdir()

    @rank_zero_only
    def discard(self) -> None:
        if self.staged is not None and self.staged.is_dir():
            shutil.rmtree(self.staged)


def run(cfg: DictConfig) -> float | None:
    """Train one job (:func:`train`) and record its result in ``<output_dir>/result.json``:
    overrides, status (ok, failed, skipped or interrupted, with the error's first line),
    final metrics, the optimized metric and which way it is better, wall time. Return the
    optimized metric (None if the job did not run).

    Outside a multirun, errors propagate as usual; in a multirun the job is recorded as
    failed and the sweep goes on (with ``fail_fast=true`` the later jobs are skipped). A resume
    (``ckpt_path``) that is refused before training starts, or that finds its run already
    finished, leaves the run directory as it was: no result.json, no new .hydra/ config.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    # Unresolved: an override such as model.net.hidden_size=${data.x} is text here, not an interpolation.
    overrides = (OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
                 if HydraConfig.initialized() else [])
    result: dict[str, Any] = {"overrides": sweep_overrides(overrides), "optimized_metric": cfg.get("optimized_metric"),
                              "mode": cfg.get("optimized_mode"), "status": "ok", "error": "", "value": None,
                              "metrics": {}}
    start = time.perf_counter()
    resumed = _ResumedConfig()
    started = nothing_to_do = False
    continued_from = None  # the checkpoint a job of a resumed sweep continues from

    def before_fit() -> None:
        nonlocal started
        started = True
        resumed.accept()
        if continued_from is not None:
            mark_continued(continued_from, Path(cfg.paths.output_dir), result["overrides"])

    # A job of a resumed (or requeued) sweep records what it did, even a failure before training.
    sweep_job = multirun and (cfg.get("resume_sweep") is not None or _requeued())
    set_threads(cfg)
    try:
        if sweep_job:
            continued_from = prepare_resumed_job(cfg, overrides)
            if continued_from is not None:
                result["resumed_from"] = str(continued_from)
                log.info(f"Resuming the sweep's job from {continued_from}")
        if multirun and cfg.get("fail_fast", False):
            _stop_if_a_job_failed()
        metrics, value = train(cfg, before_fit=before_fit)
        result.update(metrics={k: v for k, v in metrics.items() if k.startswith(("train/", "val/", "test/"))},
                      value=value)
        if value is not None and not math.isfinite(value):
            raise FloatingPointError(f"optimized metric {result['optimized_metric']} is {value}")
    except (RunAlreadyFinished, JobAlreadyDone) as done:
        nothing_to_do = True
        print(f"Nothing to do: {done}", flush=True)
        recorded = done.result.get("metrics", {})
        if recorded:
            print("Recorded metrics:\n" + "\n".join(f"  {k:<20} {v:.4f}" for k, v in sorted(recorded.items())),
                  flush=True)
        return done.result.get("value")
    except JobMismatch as err:
        nothing_to_do = True  # another job's directory: left as it is
        log.error(f"Job not run: {err}")
    except KeyboardInterrupt as err:
        result.update(status="interrupted", error=str(err) or "KeyboardInterrupt", value=None)
        raise
    except JobSkipped as err:
        result.update(status="skipped", error=str(err))
        log.warning(f"Skipped: {err}")
        if not multirun:
            raise
    except Exception as err:
        result.update(status="failed", error=first_line(err), value=None)
        if not multirun:
            raise
        if cfg.get("fail_fast", False):
            log.error(f"Job failed; fail_fast=true skips the rest of the sweep: {first_line(err)}")
        else:
            log.error(f"Job failed (the sweep goes on; fail_fast=true stops it): {first_line(err)}")
    finally:
        finish_runs(failed=result["status"] != "ok")  # a job that failed or was interrupted
        if nothing_to_do or (resumed.staged is not None and not started and not sweep_job):
            resumed.discard()  # a finished run, or a resume refused before training: the run directory stays as it was
        else:
            resumed.accept()
            result["wall_time_s"] = round(time.perf_counter() - start, 2)
            _write_result(cfg, result)
    return result["value"]


def _requeued() -> bool:
    """Whether SLURM requeued this job (after a time limit or pre-emption, through submitit's
    checkpointing): it then continues like a job of a resumed sweep."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _stop_if_a_job_failed() -> None:
    """With fail_fast, launchers that run a whole batch of jobs (Hydra's basic launcher does)
    still call the jobs after a failure; those jobs end at once instead of training."""
    for path in Path(HydraConfig.get().sweep.dir).glob(f"*/{RESULT_FILE}"):
        if json.loads(path.read_text())["status"] == "failed":
            raise JobSkipped(f"job {path.parent.name} failed and fail_fast=true")


@rank_zero_only
def _write_result(cfg: DictConfig, result: dict) -> None:
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RESULT_FILE).write_text(json.dumps(result, indent=2))
