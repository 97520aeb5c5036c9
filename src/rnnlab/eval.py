"""Evaluation: rebuild a trained task and its data from a checkpoint and test it.

``scripts/eval.py`` wraps :func:`evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

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
    name only rnnlab's classes. A character model is evaluated as the data reads the text:
    ``data.stateful=true`` carries its state through the test text in ``batch_size``
    streams, ``false`` reads independent windows from a zero state, however it was trained.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    task, datamodule = load_for_evaluation(cfg.ckpt_path, cfg.get("data"), stage="test")
    check_batches(cfg, type(task), datamodule, stage="test")
    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", logger=instantiate_group(cfg.get("logger"), "logger") or False,
                                          callbacks=[], enable_checkpointing=False)
    results = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    log.info("\n".join([f"Checkpoint: {cfg.ckpt_path}", "Test metrics:",
                         *(f"  {key:<20} {metrics[key]:.4f}" for key in sorted(metrics))]))
    return metrics


def load_for_evaluation(ckpt_path: str, data_overrides: Mapping | None = None,
                        stage: str = "test") -> tuple[L.LightningModule, L.LightningDataModule]:
    """The trained task of ``ckpt_path`` and its data module, rebuilt from the data config the
    checkpoint stores with ``data_overrides`` (a mapping, or None) merged over it, given the
    training data's state and set up for ``stage``; the data's sizes and vocabulary are
    checked against the model's.

    Whether a language model carries its state from batch to batch follows the data
    (``stateful``): that is a way of reading the text, not a property of the weights.
    """
    trusted = (data_overrides or {}).get("_target_")
    task, data_config = load_task(ckpt_path, data_target=trusted)
    if data_config is None:
        raise CheckpointError(f"{ckpt_path!r} holds no data config; it was not written by rnnlab.train")
    data_cfg = OmegaConf.merge(data_config, data_overrides or {})
    check_targets(OmegaConf.to_container(data_cfg), ckpt_path, "data", trusted=trusted)
    datamodule = instantiate_node(data_cfg, "data")
    restore_data_state(datamodule, task)
    datamodule.setup(stage)
    settings = datamodule.model_settings() if hasattr(datamodule, "model_settings") else {}
    if "carry_state" in settings and "carry_state" in task.hparams:
        task.hparams.carry_state = bool(settings["carry_state"])
    # The data's sizes and vocabulary against the trained model's.
    fill_model_from_data(OmegaConf.create(dict(task.hparams)), datamodule, source="checkpoint")
    return task, datamodule
