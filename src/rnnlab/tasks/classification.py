"""Sequence classification: cross-entropy on one label per sequence."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics import Accuracy, F1Score, MetricCollection

from .base import RNNTask


class ClassificationTask(RNNTask):
    """Trains any network mapping x (B, T, D) to logits (B, C) that has ``num_classes``.

    Logs ``{train,val,test}/loss``, ``/acc`` and ``/f1`` (macro), and ``val/acc_best``.
    """

    monitor, monitor_mode = "val/acc", "max"
    BATCH = (("x", "BTD", "float"), ("y", "B", "int64"), ("lengths", "B", "int"))
    BATCH_REQUIRED = 2

    def __init__(self, net, optimizer, scheduler=None):
        super().__init__(net, optimizer, scheduler)

    def make_metrics(self) -> MetricCollection:
        n = self.net.num_classes
        return MetricCollection({"acc": Accuracy(task="multiclass", num_classes=n),
                                 "f1": F1Score(task="multiclass", num_classes=n, average="macro")})

    def loss_and_outputs(self, batch, stage):
        args, kwargs = self.net_inputs(batch)  # x (B, T, D) [, lengths (B,)]
        y = batch[1]  # (B,)
        logits = self.net(*args, **kwargs)  # (B, C)
        return F.cross_entropy(logits, y), logits, y, y.shape[0]
