"""Everything a training run checks before it builds or trains anything: that this machine
and launcher can run it, the seed, the trainer's values, the kinds of the optimizer's and
scheduler's arguments, that the data gives the task's batches, and the checkpoint it
resumes from (:func:`resume_path`, :func:`check_finished`). Each failure is one
:class:`~rnnlab.errors.ConfigError` line naming the key, or a :class:`JobSkipped`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .checkpoints import epochs_done
from .checks import is_int, is_number, tuple_str
from .config import class_path, target_class
from .errors import ConfigError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # each run's record: status, metrics, wall time (see rnnlab.train.run)

class JobSkipped(RuntimeError):
    """A run that cannot happen on this machine (e.g. a GPU run without a GPU)."""


class RunAlreadyFinished(Exception):
    """``ckpt_path`` resumes a run that finished: nothing is left to train or test.

    ``result`` is the run's recorded result (its ``result.json``)."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


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
    return devices if is_int(devices) and devices > 0 else 1


# Trainer arguments Lightning checks late (an AssertionError deep in the fit loop, or after
# a whole test loop) or not at all: (what they allow, the check).
TRAINER_VALUES = {
    "max_epochs": ("-1 (no limit) or an int >= 1, or null", lambda v: v is None or (is_int(v) and (v == -1 or v >= 1))),
    "max_steps": ("-1 (no limit) or an int >= 1", lambda v: is_int(v) and (v == -1 or v >= 1)),
    "min_epochs": ("an int >= 0 or null", lambda v: v is None or (is_int(v) and v >= 0)),
    "min_steps": ("an int >= 0 or null", lambda v: v is None or (is_int(v) and v >= 0)),
    "log_every_n_steps": ("an int >= 1", lambda v: is_int(v) and v >= 1),
    "accumulate_grad_batches": ("an int >= 1", lambda v: is_int(v) and v >= 1),
    "check_val_every_n_epoch": ("an int >= 1 or null", lambda v: v is None or (is_int(v) and v >= 1)),
    "num_nodes": ("an int >= 1", lambda v: is_int(v) and v >= 1),
    "gradient_clip_val": ("a number >= 0 or null", lambda v: v is None or (is_number(v) and v >= 0)),
    **{key: ("an int >= 0 (batches) or a fraction in [0, 1], or null",
             lambda v: v is None or (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1))
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
    target = target_class(node, key) or None
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
        if is_number(default) and not is_number(value):
            raise ConfigError(f"{key}.{name}", f"expected a number, got {value!r}")


def check_seed(cfg: DictConfig) -> int | None:
    """The run's seed, refused unless it is an int >= 0 or null (no seeding)."""
    seed = cfg.get("seed")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ConfigError("seed", f"expected an int >= 0 or null, got {seed!r}")
    return seed


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple_str(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return type(value).__name__


def check_batches(cfg: DictConfig, task_cls: type, datamodule: L.LightningDataModule, stage: str = "fit") -> None:
    """Refuse data whose batches are not the task's (:meth:`RNNTask.batch_form`): one batch of
    the validation loader (the training loader if there is none; the test loader for
    ``stage="test"``) is read after ``setup`` and checked, so a data module of any class that
    gives the task's batches trains, and one that does not is named with what it gave."""
    if stage == "test":
        hook = "test_dataloader"
    else:
        has_val = is_overridden("val_dataloader", datamodule, L.LightningDataModule)
        hook = "val_dataloader" if has_val else "train_dataloader"
    batch = next(iter(getattr(datamodule, hook)()), None)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    data = class_path(type(datamodule))
    if choices.get("data") and data.startswith("rnnlab."):  # a user's class is named by its path alone
        data = f"data={choices['data']} ({data})"
    if batch is None:
        raise ConfigError("data", f"{data}.{hook}() gives no batch")
    problem = task_cls.batch_problem(batch)
    if problem is not None:
        model = f"model={choices['model']} ({task_cls.__name__})" if choices.get("model") else task_cls.__name__
        raise ConfigError("data", f"{model} trains on batches {task_cls.batch_form()}, got {_describe(batch)} "
                                  f"from {data}'s {hook}(): {problem}")


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
