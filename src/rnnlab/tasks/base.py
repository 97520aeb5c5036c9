"""What every rnnlab task shares: building the network and optimizer from config,
hyperparameters a checkpoint can rebuild from, and the run's data config in the checkpoint.

A task is a ``LightningModule`` that owns the loss, the metrics and their logging; the
network it trains is any ``nn.Module`` of the right kind, described by a Hydra config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection, MinMetric

from ..checks import tuple_str
from ..config import class_path, instantiate_node
from ..errors import ConfigError
from ..models.cell_base import CellBase

STAGES = ("train", "val", "test")


def split_key(stage: str) -> str:
    # nn.ModuleDict keys must not shadow nn.Module attributes such as ``train``.
    return f"{stage}_split"


def plain(value):
    """A DictConfig/ListConfig as plain dicts and lists (checkpoints hold only plain types)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


class RNNTask(L.LightningModule):
    """Base class of the tasks.

    Args:
        net: the network: a Hydra config (a mapping with ``_target_``), built here so
            that the checkpoint's hyperparameters can rebuild it, or a ready module
            (then ``load_from_checkpoint`` needs ``net=`` again).
        optimizer: a Hydra config with ``_partial_: true`` (e.g. ``torch.optim.Adam``
            with ``lr``), or a callable taking the parameters.
        scheduler: optional, like ``optimizer`` but for a learning-rate scheduler taking
            the optimizer; stepped every epoch (``ReduceLROnPlateau`` watches ``monitor``).

    Subclasses set ``monitor`` (main validation metric) and ``monitor_mode`` ("min"/"max"),
    implement :meth:`loss_and_outputs`, and may return torchmetrics from
    :meth:`make_metrics` and add derived values in :meth:`epoch_values`.

    Logged: ``train/loss``, the loss of the batch, at each step the loggers write
    (``trainer.log_every_n_steps``); at the end of each epoch ``<stage>/loss`` (the
    exact mean over the epoch's samples or tokens; ``train/loss_epoch`` for training),
    every metric as ``<stage>/<name>``, and ``<monitor>_best``, the best validation
    value so far.
    """

    monitor: ClassVar[str]
    monitor_mode: ClassVar[str]
    # The batches the task trains on, the contract a data module meets: per element of the
    # batch tuple its name, its dimensions (letters shared across elements must agree) and
    # its kind, "float", "int64" or "int" (any integer dtype); the elements after
    # BATCH_REQUIRED are optional.
    BATCH: ClassVar[tuple[tuple[str, str, str], ...]]
    BATCH_REQUIRED: ClassVar[int]

    def __init__(self, net: Mapping | nn.Module, optimizer: Mapping | Callable,
                 scheduler: Mapping | Callable | None = None, **hparams: Any):
        super().__init__()
        self.net = instantiate_node(net, "net") if isinstance(net, Mapping) else net
        self._optimizer, self._scheduler = optimizer, scheduler
        saved = {"optimizer": plain(optimizer), "scheduler": plain(scheduler), **hparams}
        if isinstance(net, Mapping):
            saved = {"net": plain(net), **saved}
        self.save_hyperparameters({k: v for k, v in saved.items() if not callable(v) or isinstance(v, Mapping)})
        # The data config of the run, put into checkpoints by on_save_checkpoint so that
        # eval and generate can rebuild the data too, and the run's other settings (trainer,
        # seed), which a resume must not change. Set by rnnlab.train.train().
        self.data_config: dict | None = None
        self.run_config: dict | None = None
        self.losses = nn.ModuleDict({split_key(stage): MeanMetric() for stage in STAGES})
        metrics = self.make_metrics()
        self.metrics = (nn.ModuleDict({split_key(stage): metrics.clone(prefix=f"{stage}/") for stage in STAGES})
                        if metrics else None)
        # The best validation value so far; persistent, so checkpoints hold it and a resumed
        # run's <monitor>_best continues it.
        self.monitor_best = MaxMetric() if self.monitor_mode == "max" else MinMetric()
        self.monitor_best.persistent(True)

    # ------------------------------------------------------------ subclass API
    def make_metrics(self) -> MetricCollection | None:
        return None

    def loss_and_outputs(self, batch, stage: str
                         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int | torch.Tensor]:
        """Return (mean loss, predictions and targets for the metrics, loss weight) for a
        batch of ``stage`` ("train", "val", "test")."""
        raise NotImplementedError

    def epoch_values(self, stage: str, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values to log at the end of an epoch of ``stage`` given its mean loss."""
        values = {f"{stage}/loss" if stage != "train" else "train/loss_epoch": loss}
        if self.metrics is not None:
            values.update(self.metrics[split_key(stage)].compute())
        return values

    def net_inputs(self, batch) -> tuple[tuple, dict]:
        """(args, kwargs) for ``self.net``: the inputs, plus ``lengths`` when the batch of a
        variable-length dataset carries them as its third element."""
        kwargs = {"lengths": batch[2]} if len(batch) > 2 else {}
        return (batch[0],), kwargs

    @classmethod
    def batch_form(cls) -> str:
        """The task's batches in words: ``(x (B, T, D) float, y (B,) int64[, lengths (B,) int])``."""
        parts = [f"{name} {tuple_str(dims)} {kind}" for name, dims, kind in cls.BATCH]
        required, optional = parts[:cls.BATCH_REQUIRED], parts[cls.BATCH_REQUIRED:]
        return "(" + ", ".join(required) + "".join(f"[, {p}]" for p in optional) + ")"

    @classmethod
    def batch_problem(cls, batch) -> str | None:
        """What keeps ``batch`` from being one of this task's batches, or None."""
        return cls.form_problem(cls.BATCH, batch)

    @classmethod
    def form_problem(cls, form: tuple, batch) -> str | None:
        """What keeps ``batch`` from having ``form`` (a ``BATCH``-like tuple), or None."""
        if not isinstance(batch, (tuple, list)) or not cls.BATCH_REQUIRED <= len(batch) <= len(form):
            count = (f"{cls.BATCH_REQUIRED}" if cls.BATCH_REQUIRED == len(form)
                     else f"{cls.BATCH_REQUIRED} or {len(form)}")
            got = f"{len(batch)}" if isinstance(batch, (tuple, list)) else "a " + type(batch).__name__
            return f"a batch is a tuple of {count} tensors, got {got}"
        sizes: dict[str, tuple[int, str]] = {}  # letter -> (size, the element that set it)
        for (name, dims, kind), value in zip(form, batch):
            if not isinstance(value, torch.Tensor):
                return f"{name} is a {type(value).__name__}, not a tensor"
            if value.dim() != len(dims):
                return (f"{name} has {value.dim()} dimension{'' if value.dim() == 1 else 's'}, "
                        f"not {len(dims)} {tuple_str(dims)}")
            if kind == "float" and not value.is_floating_point():
                return f"{name} is {str(value.dtype).removeprefix('torch.')}, not a float tensor"
            if kind == "int64" and value.dtype != torch.long:
                return f"{name} is {str(value.dtype).removeprefix('torch.')}, not int64"
            if kind == "int" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
                return f"{name} is {str(value.dtype).removeprefix('torch.')}, not an integer tensor"
            for letter, size in zip(dims, value.shape):
                first, owner = sizes.setdefault(letter, (size, name))
                if first != size:
                    return f"{name} has {letter} = {size}, {owner} has {letter} = {first}"
        return None

    # ------------------------------------------------------- shared loop logic
    def _step(self, batch, stage: str) -> torch.Tensor:
        loss, preds, target, weight = self.loss_and_outputs(batch, stage)
        self.losses[split_key(stage)].update(loss.detach(), weight=weight)
        if preds is not None:
            self.update_metrics(stage, preds.detach(), target)
        return loss

    def update_metrics(self, stage: str, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Update the stage's metrics with one batch's predictions (subclasses add their own)."""
        if self.metrics is not None:
            self.metrics[split_key(stage)].update(preds, target)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if self._logger_writes_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning sends this training step's values to the loggers: on the
        optimizer steps that complete every ``trainer.log_every_n_steps``, on the step a
        stop was requested at, and on every step of a ``fast_dev_run``.

        This copies Lightning's own rule (a private method of its logger connector) instead
        of calling ``self.log`` at every step: ``self.log`` costs about 0.3 ms a call, 10% of
        a seed-classifier step, and the values of the steps in between are never written
        anywhere. So ``train/loss`` is logged only on these steps (the progress bar shows the
        latest of them); a test pins the logged steps against Lightning's.
        """
        try:
            trainer = self.trainer
        except RuntimeError:
            return True  # not attached to a trainer: self.log decides what happens
        every = trainer.log_every_n_steps
        on_interval = every > 0 and (trainer.global_step + 1) % every == 0
        return on_interval or trainer.should_stop or bool(trainer.fast_dev_run)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _end_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.epoch_values(stage, self.losses[split_key(stage)].compute())
        # torchmetrics already synced these across DDP ranks in compute(), so every rank holds
        # the same value; sync_dist only tells Lightning so (a mean of equal numbers).
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        self.losses[split_key(stage)].reset()
        if self.metrics is not None:
            self.metrics[split_key(stage)].reset()
        return values

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._end_epoch("val")
        if self.trainer.sanity_checking:  # the untrained model's score is no one's best
            return
        self.monitor_best.update(values[self.monitor])
        self.log(f"{self.monitor}_best", self.monitor_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")

    def configure_optimizers(self):
        # torch.optim checks its arguments only here, inside fit but before the first step;
        # their errors are config errors (model.optimizer.lr=-1).
        try:
            build = instantiate(self._optimizer) if isinstance(self._optimizer, Mapping) else self._optimizer
            optimizer = build(params=self.parameters())
        except (ValueError, TypeError) as err:
            raise ConfigError("model.optimizer", str(err)) from None
        if self._scheduler is None:
            return optimizer
        try:
            build = instantiate(self._scheduler) if isinstance(self._scheduler, Mapping) else self._scheduler
            scheduler = build(optimizer=optimizer)
        except (ValueError, TypeError) as err:
            raise ConfigError("model.scheduler", str(err)) from None
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        """Lightning's optimiser step, then every cell's :meth:`~rnnlab.models.cell_base.CellBase.constrain_`
        (IndRNN's bound on its recurrent weights: the paper clips them after each update)."""
        super().optimizer_step(*args, **kwargs)
        for cell in self._constrained_cells():
            cell.constrain_()

    def _constrained_cells(self) -> list[nn.Module]:
        if not hasattr(self, "_constrained"):
            self._constrained = [m for m in self.net.modules()
                                 if isinstance(m, CellBase) and type(m).constrain_ is not CellBase.constrain_]
        return self._constrained

    def best_so_far(self) -> float | None:
        """The best validation value so far (None before the first validation epoch)."""
        best = float(self.monitor_best.max_value if self.monitor_mode == "max" else self.monitor_best.min_value)
        return best if math.isfinite(best) else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain values only: checkpoints are read back with weights_only=True.
        checkpoint["rnnlab"] = {
            "task": class_path(type(self)),
            "data": self.data_config,
            "run": self.run_config,
        }
        # A weight average (callbacks=[default,ema]) has already put its weights in state_dict and
        # the trained ones in current_model_state, with its own copy's stale best-so-far: the best
        # is the run's, not a weight, so state_dict gets the run's (what a resume that only has the
        # test left to run reports).
        trained = checkpoint.get("current_model_state")
        if trained is not None:
            for key in [k for k in trained if k.startswith("monitor_best.")]:
                checkpoint["state_dict"][key] = trained[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # data_config and run_config stay this run's: a resume may have changed how many
        # epochs it runs (rnnlab.checkpoints.check_resumable allows only such changes).
        # Checkpoints written before monitor_best was a persistent state kept its value
        # in checkpoint["rnnlab"]; put it where load_state_dict now looks.
        state = checkpoint.get("state_dict", {})
        key = "monitor_best.max_value" if self.monitor_mode == "max" else "monitor_best.min_value"
        if key not in state:
            old = checkpoint.get("rnnlab", {}).get("monitor_best")
            state[key] = torch.tensor(old if old is not None else (-math.inf if self.monitor_mode == "max" else math.inf))
