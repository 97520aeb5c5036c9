"""Evaluation: rebuild a trained task and its data from a checkpoint and test it.

``scripts/eval.py`` wraps :func:`evaluate`.
"""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import config as _config  # noqa: F401  (registers the ${rnnlab.*} resolvers)
from .checkpoints import CheckpointError, check_targets, load_task
from .train import fill_model_from_data, instantiate_group

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on its data (``cfg.data`` overrides keys of
    the data config stored in the checkpoint); print and return the test metrics."""
    task, data_config = load_task(cfg.ckpt_path)
    if data_config is None:
        raise CheckpointError(f"{cfg.ckpt_path!r} holds no data config; it was not written by rnnlab.train")
    data_cfg = OmegaConf.merge(data_config, cfg.get("data") or {})
    check_targets(OmegaConf.to_container(data_cfg), cfg.ckpt_path, "data")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    fill_model_from_data(OmegaConf.create(dict(task.hparams)), datamodule)  # vocabulary must match
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False,
                                     callbacks=[], enable_checkpointing=False)
    results = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    log.info("\n".join([f"Checkpoint: {cfg.ckpt_path}", "Test metrics:",
                         *(f"  {key:<20} {metrics[key]:.4f}" for key in sorted(metrics))]))
    return metrics
