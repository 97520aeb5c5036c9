"""Sequence tagging: cross-entropy on one tag per time step, padding ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics import Accuracy, F1Score, MetricCollection

from .base import RNNTask

from ..data.tagging import PAD_TAG


class TaggingTask(RNNTask):
    """Trains any network mapping x (B, T, D) to logits (B, T, K) that has ``num_tags``.

    Loss and metrics run over every step whose tag is not ``PAD_TAG`` (-100). Logs
    ``{train,val,test}/loss``, token accuracy ``/acc``, macro ``/f1`` and ``val/acc_best``.
    """

    monitor, monitor_mode = "val/acc", "max"
    BATCH = (("x", "BTD", "float"), ("tags", "BT", "int64"), ("lengths", "B", "int"))
    BATCH_REQUIRED = 2

    def __init__(self, net, optimizer, scheduler=None):
        super().__init__(net, optimizer, scheduler)

    def make_metrics(self) -> MetricCollection:
        n = self.net.num_tags
        return MetricCollection({
            "acc": Accuracy(task="multiclass", num_classes=n, ignore_index=PAD_TAG),
            "f1": F1Score(task="multiclass", num_classes=n, average="macro", ignore_index=PAD_TAG),
        })

    def loss_and_outputs(self, batch, stage):
        args, kwargs = self.net_inputs(batch)  # x (B, T, D) [, lengths (B,)]
        tags = batch[1]  # (B, T), PAD_TAG past each sequence's length
        logits = self.net(*args, **kwargs)  # (B, T, K)
        flat_logits, flat_tags = logits.flatten(0, 1), tags.flatten()  # (B*T, K), (B*T,)
        loss = F.cross_entropy(flat_logits, flat_tags, ignore_index=PAD_TAG)
        return loss, flat_logits, flat_tags, (flat_tags != PAD_TAG).sum()
