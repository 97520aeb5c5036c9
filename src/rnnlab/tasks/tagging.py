"""Sequence tagging: cross-entropy on one tag per time step, padding ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics import Accuracy, F1Score, MetricCollection

from .base import RNNTask

PAD_TAG = -100  # tag value of padded steps: ignored by the loss and the metrics


class TaggingTask(RNNTask):
    """Trains any network mapping x (B, T, D) to logits (B, T, K) that has ``num_tags``.

    Loss and metrics run over every step whose tag is not ``PAD_TAG`` (-100). Logs
    ``{train,val,test}/loss``, token accuracy ``/acc``, macro ``/f1`` and ``val/acc_best``.
    """

    monitor, monitor_mode = "val/acc", "max"

    def __init__(self, net, optimizer, scheduler=None):
        super().__init__(net, optimizer, scheduler)

    def make_metrics(self) -> MetricCollection:
        n = self.net.num_tags
        return MetricCollection({
            "acc": Accuracy(task="multiclass", num_classes=n, ignore_index=PAD_TAG),
            "f1": F1Score(task="multiclass", num_classes=n, average="macro", ignore_index=PAD_TAG),
        })

    def loss_and_outputs(self, batch):
        x, tags = batch[0], batch[1]  # (B, T, D), (B, T)
        logits = self.net(x)  # (B, T, K)
        flat_logits, flat_tags = logits.flatten(0, 1), tags.flatten()  # (B*T, K), (B*T,)
        loss = F.cross_entropy(flat_logits, flat_tags, ignore_index=PAD_TAG)
        return loss, flat_logits, flat_tags, (flat_tags != PAD_TAG).sum()
