"""Lightning callbacks rnnlab adds to what Lightning ships."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm


class ParameterHistograms(L.Callback):
    """Every ``every_n_steps`` optimizer steps, log per-parameter weight and gradient
    histograms to TensorBoard and per-parameter gradient L2 norms as scalars.

    Gradients are read in ``on_before_optimizer_step``: after backward, before any
    gradient clipping, so the norms show what backpropagation produced.

    Args:
        every_n_steps: interval in optimizer steps (>= 1).
    """

    def __init__(self, every_n_steps: int = 50):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"callbacks.parameter_histograms.every_n_steps: expected an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        pl_module.log_dict(grad_norm(pl_module.net, norm_type=2))
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name, param in pl_module.net.named_parameters():
                logger.experiment.add_histogram(f"weights/{name}", param.detach(), step)
                if param.grad is not None:
                    logger.experiment.add_histogram(f"grads/{name}", param.grad.detach(), step)
