"""Training: build data, task, callbacks, loggers and trainer from a Hydra config, fit,
test the best checkpoint, and return the metric a sweeper optimises.

``scripts/train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`; tests call
:func:`train` directly with configs composed from ``conf/``.

Everything that can be checked is checked before anything is built or trained: the
launch, the seed, that the model trains on the chosen data, the checkpoint to resume
from, that the checkpoint directories are writable. Every run also gets rnnlab's
reliability callbacks (see :mod:`rnnlab.callbacks`) and its atomic, weights-only
checkpoint reader and writer (:class:`rnnlab.checkpoints.AtomicCheckpointIO`).

Resuming: ``ckpt_path=last`` resumes the run in ``hydra.run.dir`` from its
``checkpoints/last.ckpt`` (saved at every epoch end), so a crashed or interrupted run
continues with the command that started it plus ``hydra.run.dir=<run dir> ckpt_path=last``,
and ends with the metrics and weights an uninterrupted run would have.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch.utils.tensorboard.summary import hparams as hparams_summary

from .callbacks import StepSeed, StopOnInterrupt, StopOnNonFiniteLoss
from .checkpoints import (AtomicCheckpointIO, check_resumable, check_same_task, check_writable, describe_difference,
                          epochs_done, load_checkpoint)
from .config import ConfigError, instantiate_node
from .data import CharDataModule, SyntheticSequenceDataModule, TaggingDataModule
from .tasks import ClassificationTask, LanguageModelTask, TaggingTask
from .tasks.base import RNNTask, plain

log = logging.getLogger(__name__)

# The data each task trains on: the batch its loss_and_outputs reads. A classifier's
# (x (B, T, D), y (B,)), a tagger's (x (B, T, K), tags (B, T)) and a language model's
# (ids (B, T), next ids (B, T)) cannot stand in for one another.
TASK_DATA = {
    ClassificationTask: (SyntheticSequenceDataModule, "synthetic"),
    TaggingTask: (TaggingDataModule, "tagging"),
    LanguageModelTask: (CharDataModule, "chars"),
}


RESULT_FILE = "result.json"  # each run's record: status, metrics, wall time (see rnnlab.sweeps.run_job)


class JobSkipped(RuntimeError):
    """A run that cannot happen on this machine (e.g. a GPU run without a GPU)."""


class RunAlreadyFinished(Exception):
    """``ckpt_path`` resumes a run that finished: nothing is left to train or test.

    ``result`` is the run's recorded result (its ``result.json``)."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at an epoch end, after its checkpoint was saved."""


def check_launch(cfg: DictConfig) -> None:
    """Refuse, before any work, runs this machine or launcher cannot do."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise JobSkipped(f"trainer.accelerator={accelerator} but no CUDA GPU is available on this machine")
    strategy = str(cfg.trainer.get("strategy", "auto"))
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    launched = any(v in os.environ for v in ("LOCAL_RANK", "SLURM_NTASKS"))
    if multirun and strategy.startswith("ddp") and strategy != "ddp_spawn" and not launched:
        # Lightning starts the other DDP ranks by re-running the command line; in a local
        # multirun that command is the whole sweep, so every rank would start a sweep.
        raise ValueError(f"trainer.strategy={strategy} cannot start its processes inside a local multirun; "
                         "use trainer.strategy=ddp_spawn, or the SLURM launcher (hydra/launcher=slurm)")
    processes = cpu_processes(cfg)
    cores = os.cpu_count() or 1
    if processes > cores:
        log.warning(f"trainer.devices={cfg.trainer.get('devices')} starts {processes} training processes on the CPU of "
                    f"a machine with {cores} cores: they will compete for the cores and each run slower than one "
                    "process alone")


def cpu_processes(cfg: DictConfig) -> int:
    """How many processes a CPU run starts on this machine (trainer.devices), 0 if it runs elsewhere."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return 0
    devices = trainer.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Trainer arguments Lightning checks late (an AssertionError deep in the fit loop, or after
# a whole test loop) or not at all: (what they allow, the check).
TRAINER_VALUES = {
    "max_epochs": ("-1 (no limit) or an int >= 1, or null", lambda v: v is None or (_is_int(v) and (v == -1 or v >= 1))),
    "max_steps": ("-1 (no limit) or an int >= 1", lambda v: _is_int(v) and (v == -1 or v >= 1)),
    "min_epochs": ("an int >= 0 or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "min_steps": ("an int >= 0 or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "log_every_n_steps": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
    "accumulate_grad_batches": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
    "check_val_every_n_epoch": ("an int >= 1 or null", lambda v: v is None or (_is_int(v) and v >= 1)),
    "num_nodes": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
    "gradient_clip_val": ("a number >= 0 or null", lambda v: v is None or (_is_number(v) and v >= 0)),
    **{key: ("an int >= 0 (batches) or a fraction in [0, 1], or null",
             lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1))
       for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")},
}


def check_trainer(cfg: DictConfig) -> None:
    """Refuse, before any work, trainer values Lightning would only stumble on later."""
    trainer = cfg.get("trainer") or {}
    for key, (allowed, ok) in TRAINER_VALUES.items():
        if key in trainer and not ok(trainer[key]):
            raise ConfigError(f"trainer.{key}", f"expected {allowed}, got {trainer[key]!r}")


def check_arguments(node, key: str) -> None:
    """Refuse, before any work, a config value of the wrong kind for the class it builds:
    a string where the constructor's default is a number (``model.optimizer.lr=fast``), a
    non-boolean for a boolean, or an argument the constructor does not take."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        return
    try:
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    except OmegaConfBaseException:
        return  # instantiate_node reports the interpolation with its key
    target = _target_class(node, key) or None
    if target is None:
        return
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name, value in values.items():
        if name.startswith("_"):
            continue
        param = params.get(name)
        if param is None:
            if takes_any:
                continue
            names = ", ".join(n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise ConfigError(f"{key}.{name}", f"expected an argument of {target.__name__} ({names}), got {name!r}")
        default = param.default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key}.{name}", f"expected true or false, got {value!r}")
        if _is_number(default) and not _is_number(value):
            raise ConfigError(f"{key}.{name}", f"expected a number, got {value!r}")


def check_seed(cfg: DictConfig) -> int | None:
    """The run's seed, refused unless it is an int >= 0 or null (no seeding)."""
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError("seed", f"expected an int >= 0 or null, got {seed!r}")
    return seed


def _target_class(node, key: str) -> type | None:
    """The class a config's ``_target_`` names, None for another callable (a factory).
    Imported quietly: hydra's get_class logs its failures before raising."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    parts = target.split(".") if isinstance(target, str) else []
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name, None)
        if callable(obj):
            return obj if isinstance(obj, type) else None
        break
    raise ConfigError(f"{key}._target_", f"expected an importable class, got {target!r}")


def check_model_data(cfg: DictConfig) -> None:
    """Refuse a model and data that do not go together (``model=char_rnn data=synthetic``)
    before their configs are resolved, which would fail with an interpolation error."""
    task_cls, data_cls = _target_class(cfg.model, "model"), _target_class(cfg.data, "data")
    if task_cls is None or data_cls is None:
        return
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    for task_base, (data_base, data_choice) in TASK_DATA.items():
        if issubclass(task_cls, task_base) and not issubclass(data_cls, data_base):
            model = f"model={choices['model']} ({task_cls.__name__})" if choices.get("model") else task_cls.__name__
            got = f"data={choices['data']} ({data_cls.__name__})" if choices.get("data") else data_cls.__name__
            raise ConfigError("data", f"{model} trains on {data_base.__name__} (data={data_choice}), got {got}")


def resume_path(cfg: DictConfig) -> Path | None:
    """The checkpoint ``ckpt_path`` names: a path, or ``last`` for this run directory's last.ckpt."""
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    if str(value) == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError("ckpt_path", f"'last' resumes from <run dir>/checkpoints/last.ckpt, but "
                                           f"{str(path)!r} does not exist; name the run to resume with "
                                           "hydra.run.dir=<run dir>, or give a checkpoint's path")
        return path
    return Path(str(value)).expanduser()


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger``;
    entries set to null are skipped (that is how a config switches one off)."""
    if not group:
        return []
    return [instantiate_node(entry, str(name)) for name, entry in group.items()
            if entry is not None and "_target_" in entry]


def fill_model_from_data(model_cfg: DictConfig, datamodule: L.LightningDataModule, source: str = "config") -> None:
    """Put values only the data knows (a character model's vocabulary) into the model config.

    A key left null in the model config is filled in; a key set explicitly must agree
    with the data. ``source`` names where the model config came from in the error that
    lists every disagreement: "config" (training) or "checkpoint" (eval).
    """
    settings = getattr(datamodule, "model_settings", None)
    if settings is None:
        return
    differences = []
    for key, value in settings().items():
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


def flat_hparams(cfg: DictConfig) -> dict:
    """The run's config flattened to {"model.net.hidden_size": 64, ...} for the HParams tab."""
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    for group in ("model", "data", "trainer"):
        if cfg.get(group) is not None:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
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
            writer = logger.experiment._get_file_writer()
            for summary in (exp, ssi, sei):
                writer.add_summary(summary)
        else:
            logger.log_hyperparams(params)


def data_record(data_cfg: DictConfig, datamodule: L.LightningDataModule) -> dict:
    """The data config a checkpoint keeps: the run's, with the values the data module settled
    on for its own arguments (a relative ``path`` made absolute), so eval and analysis find
    the same data from any directory."""
    record = plain(data_cfg)
    settled = getattr(datamodule, "hparams", {})
    return {key: settled.get(key, value) if key in settled else value for key, value in record.items()}


def check_finished(checkpoint: dict, cfg: DictConfig, ckpt_path: Path) -> None:
    """Raise :class:`RunAlreadyFinished` when resuming a run that has nothing left to do: its
    checkpoint has every epoch (or step) the config asks for, and its result is recorded."""
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    epochs, steps = epochs_done(checkpoint), int(checkpoint.get("global_step", 0))
    done = (max_epochs not in (None, -1) and epochs >= max_epochs) or (max_steps not in (None, -1)
                                                                       and steps >= max_steps)
    result_path = Path(cfg.paths.output_dir) / RESULT_FILE if "paths" in cfg else None
    if not done or result_path is None or not result_path.is_file():
        return  # training left, or only the final test (a run killed while testing)
    result = json.loads(result_path.read_text())
    if result.get("status") != "ok":
        return
    raise RunAlreadyFinished(f"{str(ckpt_path)!r} is the end of a finished run ({epochs} epochs, {steps} steps; "
                             f"trainer.max_epochs={max_epochs}); nothing to resume. Its recorded result is "
                             f"{str(result_path)!r}; a larger trainer.max_epochs trains it further", result)


def train(cfg: DictConfig, before_fit: Callable[[], None] | None = None) -> tuple[dict[str, float], float]:
    """Fit and test as configured; return (all final metrics, the optimized metric's value).

    ``before_fit`` is called once every check has passed, right before training starts
    (the first moment the run directory is written to).
    """
    start = time.perf_counter()
    check_launch(cfg)
    seed = check_seed(cfg)
    check_trainer(cfg)
    check_model_data(cfg)
    for group in ("optimizer", "scheduler"):
        check_arguments(cfg.model.get(group), f"model.{group}")
    ckpt_path = resume_path(cfg)
    # Read (and refuse, if it holds code, is damaged or is another task's) before building anything.
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    task_cls = _target_class(cfg.model, "model")
    if checkpoint is not None and task_cls is not None:
        check_same_task(checkpoint, task_cls, ckpt_path)
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)  # quiet: a refused resume writes no log line

    datamodule: L.LightningDataModule = instantiate_node(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    fill_model_from_data(cfg.model, datamodule)
    task: RNNTask = instantiate_node(cfg.model, "model")
    task.data_config = data_record(cfg.data, datamodule)
    task.run_config = {"trainer": plain(cfg.trainer), "seed": seed}
    if checkpoint is not None:
        check_resumable(checkpoint, task, ckpt_path)
        check_finished(checkpoint, cfg, ckpt_path)
        del checkpoint  # Lightning reads it again, through AtomicCheckpointIO

    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is not None and entry.get("dirpath"):
            check_writable(entry.dirpath, f"callbacks.{name}.dirpath")
    interrupt = StopOnInterrupt()
    callbacks = [*instantiate_group(cfg.get("callbacks")), StopOnNonFiniteLoss(), interrupt]
    # trainer.enable_progress_bar=false (or enable_model_summary=false) is enough on its own:
    # the configured bar or summary callback would make Lightning refuse the combination.
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [cb for cb in callbacks if not isinstance(cb, ModelSummary)]
    if seed is not None:
        callbacks.append(StepSeed(seed))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                          plugins=[AtomicCheckpointIO()])
    if before_fit is not None:
        before_fit()

    if trainer.is_global_zero:
        stem = task.monitor.split("/", 1)[1]
        log_hparams(loggers, flat_hparams(cfg),
                    [task.monitor, f"{task.monitor}_best", "val/loss", f"test/{stem}", "test/loss"])

    output_dir = cfg.paths.output_dir if "paths" in cfg else trainer.default_root_dir
    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path and str(ckpt_path), weights_only=True)
    if interrupt.stopped_epoch is not None:
        raise TrainingInterrupted(f"stopped after epoch {interrupt.stopped_epoch} (step {trainer.global_step}), "
                                  f"whose checkpoints are saved in {output_dir}/checkpoints; resume with the same "
                                  f"command plus hydra.run.dir={output_dir} ckpt_path=last")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", True):
        best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor == task.monitor), "")
        if not best and cfg.get("train", True) and not trainer.fast_dev_run:
            print("No best checkpoint was saved; testing the weights in memory.")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})

    name = cfg.get("optimized_metric")
    if name == f"{task.monitor}_best" and name not in metrics and task.monitor_best.update_count:
        metrics[name] = float(task.monitor_best.compute())  # a resume that only had the test left to run
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
    return metrics, value
