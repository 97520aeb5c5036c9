"""Experiment trackers beyond TensorBoard: MLflow and Weights & Biases, through Lightning's
own loggers (``conf/logger/mlflow.yaml``, ``wandb.yaml``; ``many.yaml`` runs them all).

Each is an optional extra (``pip install 'rnnlab[mlflow]'``, ``'rnnlab[wandb]'``); a run
that asks for one whose package is missing is refused in one line naming the extra, before
anything is built. A tracker run records the run's flattened config as parameters (see
:func:`rnnlab.train.log_hparams`), its metrics, and the paths of its best and last
checkpoints (MLflow tags / W&B summary ``checkpoint.best``, ``checkpoint.last``). Each run
directory keeps its tracker run ids in ``trackers.json``, so a resumed run (``ckpt_path``,
or a job of a resumed sweep) continues the same tracker runs instead of starting new ones.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import DictConfig, open_dict

from .config import target_class
from .errors import ConfigError

RUN_IDS = "trackers.json"
# logger class -> (the package it needs, the rnnlab extra that installs it, its run-id argument)
TRACKERS = {MLFlowLogger: ("mlflow", "mlflow", "run_id"), WandbLogger: ("wandb", "wandb", "id")}


def _tracker(entry) -> tuple | None:
    cls = target_class(entry, "logger") if entry is not None and "_target_" in entry else None
    return next((spec for tracker, spec in TRACKERS.items() if cls is not None and issubclass(cls, tracker)), None)


def check_trackers(logger_cfg: DictConfig | None) -> None:
    """Refuse a tracker whose package is not installed, naming the extra that installs it."""
    for name, entry in (logger_cfg or {}).items():
        spec = _tracker(entry)
        if spec is not None and importlib.util.find_spec(spec[0]) is None:
            raise ConfigError(f"logger.{name}", f"needs the {spec[0]} package, which is not installed: "
                                                f"pip install 'rnnlab[{spec[1]}]'")


def continue_runs(logger_cfg: DictConfig | None, output_dir: str | Path) -> None:
    """For a resumed run: point each tracker without a run id at the run this directory
    started (``trackers.json``)."""
    path = Path(output_dir) / RUN_IDS
    if not logger_cfg or not path.is_file():
        return
    ids = json.loads(path.read_text())
    for name, entry in logger_cfg.items():
        spec = _tracker(entry)
        if spec is None or name not in ids or entry.get(spec[2]) is not None:
            continue
        with open_dict(entry):
            entry[spec[2]] = ids[name]
            if issubclass(target_class(entry, "logger"), WandbLogger):
                entry["resume"] = "allow"


def remember_runs(logger_cfg: DictConfig | None, loggers: list[Logger], output_dir: str | Path) -> None:
    """Write each tracker's run id to ``<output_dir>/trackers.json``."""
    names = [name for name, entry in (logger_cfg or {}).items() if entry is not None and "_target_" in entry]
    ids = {}
    for name, logger in zip(names, loggers):
        if isinstance(logger, MLFlowLogger):
            ids[name] = logger.run_id
        elif isinstance(logger, WandbLogger):
            ids[name] = logger.experiment.id
    if ids:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RUN_IDS).write_text(json.dumps(ids, indent=2))


def record_checkpoints(loggers: list[Logger], checkpoints: dict[str, str]) -> None:
    """Record checkpoint paths (``{"best": ..., "last": ...}``) in each tracker's run."""
    checkpoints = {f"checkpoint.{key}": str(path) for key, path in checkpoints.items() if path}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for key, path in checkpoints.items():
                logger.experiment.set_tag(logger.run_id, key, path)
        elif isinstance(logger, WandbLogger):
            logger.experiment.summary.update(checkpoints)


def log_params(logger: Logger, params: dict) -> None:
    """``logger.log_hyperparams(params)``, except that an MLflow run that is being continued
    (a resume) keeps the values it recorded: MLflow refuses to change a parameter, and a
    resume may change a few (``trainer.max_epochs``, the command's overrides). The new
    values are recorded as tags ``resumed.<key>``."""
    if isinstance(logger, MLFlowLogger):
        logged = logger.experiment.get_run(logger.run_id).data.params
        changed = {k: v for k, v in params.items() if k in logged and str(v) != logged[k]}
        for key, value in changed.items():
            logger.experiment.set_tag(logger.run_id, f"resumed.{key}", str(value))
        params = {k: v for k, v in params.items() if k not in logged}
        if not params:
            return
    logger.log_hyperparams(params)


def finish_runs(failed: bool = False) -> None:
    """End the W&B run this process has open, if any. Lightning leaves it open until the
    process exits, and W&B gives a process one run at a time: without this, every later
    job of a sweep that runs in this process (the basic launcher's) would log into the
    first job's run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
