"""Sequence classification: cross-entropy on one label per sequence."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import Accuracy, F1Score, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from ..errors import ConfigError
from .base import RNNTask, split_key

log = logging.getLogger(__name__)


class ClassificationTask(RNNTask):
    """Trains any network mapping x (B, T, D) to logits (B, C) that has ``num_classes``.

    Logs ``{train,val,test}/loss``, ``/acc`` and ``/f1`` (macro), and ``val/acc_best``; at the
    end of every validation and test epoch the confusion matrix as a TensorBoard image
    (``val/confusion_matrix``, ``test/confusion_matrix``), and after testing a per-class
    report (precision, recall, F1, support) to the console and to TensorBoard's text tab.

    Args:
        net, optimizer, scheduler: see :class:`RNNTask`.
        class_names: the name of each class in index order, as the data's labels are (ints
            or strings; filled in from the data at training time), stored in every checkpoint
            and used by the reports and by predictions. None: the indices 0..C-1.
    """

    monitor, monitor_mode = "val/acc", "max"
    BATCH = (("x", "BTD", "float"), ("y", "B", "int64"), ("lengths", "B", "int"))
    BATCH_REQUIRED = 2

    def __init__(self, net, optimizer, scheduler=None, class_names: list | None = None):
        super().__init__(net, optimizer, scheduler, class_names=None if class_names is None else list(class_names))
        n = self.net.num_classes
        if class_names is not None and len(class_names) != n:
            raise ConfigError("class_names", f"expected {n} names (net.num_classes), got {len(class_names)}")
        self.class_names = None if class_names is None else list(class_names)
        self.confusion = nn.ModuleDict({split_key(stage): MulticlassConfusionMatrix(num_classes=n)
                                        for stage in ("val", "test")})

    def make_metrics(self) -> MetricCollection:
        n = self.net.num_classes
        return MetricCollection({"acc": Accuracy(task="multiclass", num_classes=n),
                                 "f1": F1Score(task="multiclass", num_classes=n, average="macro")})

    def names(self) -> list[str]:
        """Each class's name as text, in index order."""
        if self.class_names is None:
            return [str(i) for i in range(self.net.num_classes)]
        return [str(name) for name in self.class_names]

    def loss_and_outputs(self, batch, stage):
        args, kwargs = self.net_inputs(batch)  # x (B, T, D) [, lengths (B,)]
        y = batch[1]  # (B,)
        logits = self.net(*args, **kwargs)  # (B, C)
        return F.cross_entropy(logits, y), logits, y, y.shape[0]

    def update_metrics(self, stage, preds, target) -> None:
        super().update_metrics(stage, preds, target)
        if split_key(stage) in self.confusion:
            self.confusion[split_key(stage)].update(preds, target)

    def predict_step(self, batch, batch_idx) -> torch.Tensor:
        """Class probabilities (B, C) of a batch whose x (and lengths) are the task's."""
        args, kwargs = self.net_inputs(batch)
        return F.softmax(self.net(*args, **kwargs), dim=-1)  # (B, C)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._end_confusion("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._end_confusion("test")

    def _end_confusion(self, stage: str) -> None:
        metric = self.confusion[split_key(stage)]
        matrix = metric.compute()  # (C, C) rows: true class, columns: predicted; synced across ranks
        metric.reset()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        report = per_class_report(matrix, self.names())
        if stage == "test":
            log.info("Per-class test metrics:\n" + report)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                fig, _ = metric.plot(val=matrix, labels=self.names(), add_text=len(matrix) <= 20)
                logger.experiment.add_figure(f"{stage}/confusion_matrix", fig, global_step=self.global_step)
                if stage == "test":
                    # Four spaces: TensorBoard renders text as Markdown; a code block keeps the columns.
                    logger.experiment.add_text("test/per_class", "\n".join("    " + line for line in
                                                                          report.split("\n")),
                                               global_step=self.global_step)


def per_class_report(matrix: torch.Tensor, names: list[str]) -> str:
    """Precision, recall, F1 and support of each class from a confusion matrix (C, C) whose
    rows are the true classes and columns the predicted ones, as aligned text."""
    matrix = matrix.double()
    correct, support, predicted = matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros(()))
    recall = torch.where(support > 0, correct / support.clamp(min=1), torch.zeros(()))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros(()))
    width = max([len("class")] + [len(name) for name in names])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  {precision[i]:9.4f}  {recall[i]:6.4f}  {f1[i]:6.4f}  {int(support[i]):7d}")
    return "\n".join(lines)
