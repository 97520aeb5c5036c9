"""Training: build data, task, callbacks, loggers and trainer from a Hydra config, fit,
test the best checkpoint, and return the metric a sweeper optimises.

``scripts/train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`; tests call
:func:`train` directly with configs composed from ``conf/``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard.summary import hparams as hparams_summary

from .config import instantiate_node
from .tasks.base import RNNTask, plain

log = logging.getLogger(__name__)


class JobSkipped(RuntimeError):
    """A run that cannot happen on this machine (e.g. a GPU run without a GPU)."""


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


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group such as ``callbacks`` or ``logger``;
    entries set to null are skipped (that is how a config switches one off)."""
    if not group:
        return []
    return [instantiate_node(entry, str(name)) for name, entry in group.items()
            if entry is not None and "_target_" in entry]


def fill_model_from_data(model_cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Put values only the data knows (a character model's vocabulary) into the model config.

    A key left null in the model config is filled in; a key set explicitly must agree
    with the data.
    """
    settings = getattr(datamodule, "model_settings", None)
    if settings is None:
        return
    for key, value in settings().items():
        current = OmegaConf.select(model_cfg, key, default="__missing__")
        if current == "__missing__":
            continue
        if current is None:
            with open_dict(model_cfg):
                OmegaConf.update(model_cfg, key, value)
        elif current != value:
            shown = value if not isinstance(value, str) or len(value) < 40 else f"{len(value)} characters"
            raise ValueError(f"model.{key}={current!r} does not match the data, which has {shown!r}; "
                             f"set model.{key}=null to take it from the data")


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
        flat["overrides"] = " ".join(HydraConfig.get().overrides.task) or "(none)"
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


def train(cfg: DictConfig) -> tuple[dict[str, float], float]:
    """Fit and test as configured; return (all final metrics, the optimized metric's value)."""
    start = time.perf_counter()
    check_launch(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate_node(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    fill_model_from_data(cfg.model, datamodule)
    task: RNNTask = instantiate_node(cfg.model, "model")
    task.data_config = plain(cfg.data)

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        stem = task.monitor.split("/", 1)[1]
        log_hparams(loggers, flat_hparams(cfg),
                    [task.monitor, f"{task.monitor}_best", "val/loss", f"test/{stem}", "test/loss"])

    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", True):
        best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor == task.monitor), "")
        if not best and cfg.get("train", True) and not trainer.fast_dev_run:
            print("No best checkpoint was saved; testing the weights in memory.")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})

    name = cfg.get("optimized_metric")
    if name is not None and name not in metrics:
        raise ValueError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = metrics.get(name) if name is not None else None

    output_dir = cfg.paths.output_dir if "paths" in cfg else trainer.default_root_dir
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
