"""Evaluation: rebuild a trained task and its data from a checkpoint and test it.

``scripts/eval.py`` wraps :func:`evaluate`.
"""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig, OmegaConf

from .checkpoints import CheckpointError, check_targets, load_task, restore_data_state
from .config import instantiate_node
from .run_checks import check_batches
from .train import fill_model_from_data, instantiate_group

log = logging.getLogger(__name__)

def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on its data (``cfg.data`` overrides keys of
    the data config stored in the checkpoint, e.g. ``data.test_path=<another file>``); print
    and return the test metrics.

    The data module is rebuilt from the checkpoint and given what it learnt in training
    (:func:`~rnnlab.checkpoints.restore_data_state`), so another test file is read as the
    training data was. A checkpoint whose data is a user's class is evaluated only when
    that class is named again (``data._target_=mydata.Sines``): checkpoints may otherwise
    name only rnnlab's classes.
    """
    trusted = OmegaConf.select(cfg, "data._target_", default=None)
    task, data_config = load_task(cfg.ckpt_path, data_target=trusted)
    if data_config is None:
        raise CheckpointError(f"{cfg.ckpt_path!r} holds no data config; it was not written by rnnlab.train")
    data_cfg = OmegaConf.merge(data_config, cfg.get("data") or {})
    check_targets(OmegaConf.to_container(data_cfg), cfg.ckpt_path, "data", trusted=trusted)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(data_cfg, "data")
    restore_data_state(datamodule, task)
    datamodule.setup("test")
    check_batches(cfg, type(task), datamodule, stage="test")
    # The data's sizes and vocabulary against the trained model's.
    fill_model_from_data(OmegaConf.create(dict(task.hparams)), datamodule, source="checkpoint")
    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", logger=instantiate_group(cfg.get("logger"), "logger") or False,
                                          callbacks=[], enable_checkpointing=False)
    results = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    log.info("\n".join([f"Checkpoint: {cfg.ckpt_path}", "Test metrics:",
                         *(f"  {key:<20} {metrics[key]:.4f}" for key in sorted(metrics))]))
    return metrics
