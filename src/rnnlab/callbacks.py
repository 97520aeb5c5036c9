"""Lightning callbacks rnnlab adds to what Lightning ships.

:class:`ParameterHistograms`, :class:`HiddenStateMonitor`, :class:`NetworkSummary` and
:class:`BudgetSchedule` are configured in ``conf/callbacks/``. The other three make
runs reliable and are added to every run by :func:`rnnlab.train.train`, whatever the
callbacks config says: :class:`StepSeed` (a resumed run draws the same random numbers as an
uninterrupted one), :class:`StopOnNonFiniteLoss` (a diverged loss stops the run naming the
step) and :class:`StopOnInterrupt` (Ctrl-C ends the run at the next checkpoint).
"""

from __future__ import annotations

import hashlib
import math
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichModelSummary, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torchmetrics import Metric

from . import analyze, checks


class HiddenStateMonitor(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log the analysis figures of
    :mod:`rnnlab.analyze` to TensorBoard for the first ``num_examples`` examples of the first
    validation batch: hidden-state heatmaps, saturation and the gradient flow over time.

    Args:
        every_n_epochs: interval in epochs (>= 1).
        num_examples: examples used for the gradient norms and saturation (>= 1).
    """

    def __init__(self, every_n_epochs: int = 1, num_examples: int = 16):
        for name, value in (("every_n_epochs", every_n_epochs), ("num_examples", num_examples)):
            if not checks.is_int(value) or value < 1:
                raise checks.ArgumentError(name, f"expected an int >= 1, got {value!r}")
        self.every_n_epochs, self.num_examples = every_n_epochs, num_examples

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        batch = next(iter(trainer.datamodule.val_dataloader()))
        batch = tuple(t[: self.num_examples].to(pl_module.device) for t in batch)
        if len(batch) > 2:  # variable lengths: analyse the examples as full-length sequences
            batch = batch[:2]
        recordings = [r.cpu() for r in analyze.record(pl_module, batch)]
        step = trainer.global_step
        for logger in loggers:
            for rec in recordings:
                tag = rec.name.replace(".", "/")
                logger.experiment.add_figure(f"analysis/{tag}/hidden_states", analyze.heatmap_figure(rec), step)
                logger.experiment.add_figure(f"analysis/{tag}/saturation", analyze.saturation_figure(rec), step)
                for layer, value in enumerate(rec.saturation()):
                    logger.experiment.add_scalar(f"analysis/{tag}/saturated_fraction_layer{layer}", value, step)
            logger.experiment.add_figure("analysis/gradient_flow", analyze.gradient_flow_figure(recordings), step)


class NetworkSummary(RichModelSummary):
    """Lightning's model summary, showing the network: the task's metric modules (torchmetrics
    states such as the losses, accuracies, confusion matrices and entity scores, no parameters)
    are left out of the table.

    Args:
        max_depth: as ``RichModelSummary``; 4 shows each layer of an RNN (``net.rnn.cells.0``).
    """

    _hidden: frozenset[str] = frozenset()  # set at each fit start, from the task

    def _summary(self, trainer, pl_module):
        # The task's top-level modules that are torchmetrics Metrics or hold only Metrics.
        self._hidden = frozenset(name for name, child in pl_module.named_children() if _holds_only_metrics(child))
        return super()._summary(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  **kwargs) -> None:
        names = dict(summary_data)["Name"]
        keep = [i for i, name in enumerate(names) if name.split(".")[0] not in self._hidden]
        summary_data = [(column, [values[i] for i in keep]) for column, values in summary_data]
        modes = dict(summary_data)["Mode"]  # the shown modules' train/eval counts, not the metrics'
        total_training_modes = {mode: modes.count(mode) for mode in ("train", "eval")}
        RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                   total_training_modes, **kwargs)


def _holds_only_metrics(module: torch.nn.Module) -> bool:
    children = list(module.children())
    return isinstance(module, Metric) or (bool(children) and all(_holds_only_metrics(c) for c in children))


class ParameterHistograms(L.Callback):
    """Every ``every_n_steps`` optimizer steps, log per-parameter weight and gradient
    histograms to TensorBoard and per-parameter gradient L2 norms as scalars.

    Gradients are read in ``on_before_optimizer_step``: after backward, before any
    gradient clipping, so the norms show what backpropagation produced.

    Args:
        every_n_steps: interval in optimizer steps (>= 1).
        bins: number of equal-width buckets between each tensor's min and max (>= 1).
            TensorBoard's own ``tf.summary.histogram`` uses 30. (``add_histogram``'s default,
            about 1,500 exponentially spaced "tensorflow" buckets, costs about 1 ms per
            tensor, 4-6x more, and makes the event file larger.)
    """

    def __init__(self, every_n_steps: int = 50, bins: int = 64):
        for name, value in (("every_n_steps", every_n_steps), ("bins", bins)):
            if not checks.is_int(value) or value < 1:
                raise checks.ArgumentError(name, f"expected an int >= 1, got {value!r}")
        self.every_n_steps, self.bins = every_n_steps, bins

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        pl_module.log_dict(grad_norm(pl_module.net, norm_type=2))
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name, param in pl_module.net.named_parameters():
                logger.experiment.add_histogram(f"weights/{name}", param.detach(), step, bins=self.bins)
                if param.grad is not None:
                    logger.experiment.add_histogram(f"grads/{name}", param.grad.detach(), step, bins=self.bins)


class StepSeed(L.Callback):
    """Make the random numbers of every training batch (dropout masks) a function of
    (seed, rank, epoch, batch index) alone.

    The data order is already a pure function of (seed, epoch, rank) (see
    ``rnnlab.data.batching``), but the global generator that dropout draws from is not: it
    also advances when a DataLoader iterator is created, during the sanity check, and
    wherever else a run's history differs. A run resumed from a checkpoint has a different
    history from an uninterrupted one, so without this its dropout masks, and from then on
    its weights, would differ. Outside training steps the global generator is restored and
    runs as if this callback were not there.

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._outside: list[tuple[str, torch.Tensor]] = []

    def _batch_seed(self, trainer, batch_idx: int) -> int:
        text = f"{self.seed}/{trainer.global_rank}/{trainer.current_epoch}/{batch_idx}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seed = self._batch_seed(trainer, batch_idx)
        self._outside = [("cpu", torch.get_rng_state())]
        torch.set_rng_state(torch.Generator().manual_seed(seed).get_state())
        if pl_module.device.type == "cuda":
            self._outside.append(("cuda", torch.cuda.get_rng_state(pl_module.device)))
            torch.cuda.manual_seed(seed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for kind, state in self._outside:
            if kind == "cpu":
                torch.set_rng_state(state)
            else:
                torch.cuda.set_rng_state(state, pl_module.device)
        self._outside = []


class BudgetSchedule(L.Callback):
    """Anneal the learning rate over the run's whole budget: a linear warm-up, then a cosine
    from the optimiser's learning rate down to ``final`` times it, reached when the trainer
    stops. The budget is what stops the trainer: the share of ``trainer.max_time`` spent, so
    that runs compared at equal wall time all complete their schedule whatever their speed,
    or of the optimiser steps Lightning expects from ``max_steps`` / ``max_epochs``
    (``trainer.estimated_stepping_batches``), whichever is further along.

    Every parameter group's rate is set before each training batch. The configured rate is
    kept in the group as ``initial_lr`` (the key torch's own schedulers use), which is saved
    with the optimiser, and Lightning's Timer saves the time spent, so a resumed run goes
    on with the schedule where it stopped. Under DDP rank 0's progress is broadcast, so
    every rank steps with the same rate. It replaces ``model.scheduler``: setting both is
    refused.

    Args:
        warmup: share of the budget over which the rate rises linearly from 0 (0: none).
        final: the rate at the end of the budget, as a fraction of the configured one.
    """

    def __init__(self, warmup: float = 0.0, final: float = 0.0):
        if not checks.is_number(warmup) or not 0.0 <= warmup < 1.0:
            raise ValueError(f"callbacks.budget_schedule.warmup: expected a number in [0, 1), got {warmup!r}")
        if not checks.is_number(final) or not 0.0 <= final <= 1.0:
            raise ValueError(f"callbacks.budget_schedule.final: expected a number in [0, 1], got {final!r}")
        self.warmup, self.final = float(warmup), float(final)
        self._timer: Timer | None = None
        self._steps = math.inf

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError("callbacks.budget_schedule sets the learning rate at every step, and so does "
                             "model.scheduler: expected one of them, got both")
        self._timer = next((cb for cb in trainer.callbacks
                            if isinstance(cb, Timer) and cb.time_remaining() is not None), None)
        self._steps = float(trainer.estimated_stepping_batches)
        if self._timer is None and not math.isfinite(self._steps):
            raise ValueError("callbacks.budget_schedule anneals over the run's budget: expected trainer.max_time, "
                             "trainer.max_steps or trainer.max_epochs to be set, got none")

    def progress(self, trainer) -> float:
        """The share of the budget spent, in [0, 1]."""
        shares = [trainer.global_step / self._steps if math.isfinite(self._steps) else 0.0]
        if self._timer is not None:
            spent = self._timer.time_elapsed("train")
            shares.append(spent / max(spent + self._timer.time_remaining("train"), 1e-9))
        return min(max(shares), 1.0)

    def factor(self, progress: float) -> float:
        """The learning rate at ``progress`` (0 to 1) as a fraction of the configured one."""
        if progress < self.warmup:
            return progress / self.warmup
        cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - self.warmup) / (1.0 - self.warmup)))
        return self.final + (1.0 - self.final) * cosine

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        progress = self.progress(trainer)
        if trainer.world_size > 1:
            progress = trainer.strategy.broadcast(progress, src=0)
        factor = self.factor(progress)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def latest_checkpoint(trainer) -> str | None:
    paths = {Path(p) for cb in trainer.checkpoint_callbacks
             for p in (getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", "")) if p}
    existing = [p for p in paths if p.is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


class StopOnNonFiniteLoss(L.Callback):
    """Stop training with :class:`TrainingDiverged` when the loss is NaN or infinite.

    Checked before backward, so the step's update is never applied and the weights in
    memory and every checkpoint already saved stay finite. The message names the global
    step and epoch and the last checkpoint saved. Under DDP the ranks agree before any of
    them stops (one small all-reduce per step), so no rank is left waiting for the others.
    """

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = loss.detach().float().cpu().item() if loss.numel() == 1 else "not finite"
        last = latest_checkpoint(trainer)
        kept = f"the last good checkpoint, {last!r}, is kept" if last else "no checkpoint had been saved yet"
        raise TrainingDiverged(
            f"the training loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"training stopped before applying that step, and {kept}. A lower model.optimizer.lr or "
            f"gradient clipping (trainer.gradient_clip_val) usually helps"
        )


class StopOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) during fit: finish the current epoch, let the checkpoint callbacks
    save as they do at every epoch end (``checkpoints/last.ckpt``), then stop.

    Stopping at an epoch boundary is what makes the saved checkpoint resume exactly: the
    data order, the learning-rate schedule and the epoch metrics all start afresh there. A
    second Ctrl-C stops at once (Lightning's own shutdown); the previous epoch's
    checkpoint is then the one to resume from. After fit, :attr:`stopped_epoch` says
    whether and where the run stopped; :func:`rnnlab.train.train` turns that into an
    interrupted run (exit status 130 from the scripts).
    """

    def __init__(self):
        self.requested = False
        self.stopped_epoch: int | None = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this epoch, once its checkpoint is saved (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.requested, self.stopped_epoch = False, None
        # Python lets only the main thread set signal handlers (not so in some launchers' workers).
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stop = self.requested
        if trainer.world_size > 1:  # every rank stops at the same epoch, or they would deadlock
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True
            trainer.fit_loop.min_epochs = None  # Ctrl-C outranks trainer.min_epochs
