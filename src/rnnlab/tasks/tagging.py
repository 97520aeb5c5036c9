"""Sequence tagging: cross-entropy on one tag per time step, padding ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Accuracy, F1Score, MetricCollection

from ..checks import tuple_str
from ..data.tagging import PAD_TAG
from ..errors import ConfigError
from .base import RNNTask, split_key
from .entities import EntityScores, is_chunk_scheme


class TaggingTask(RNNTask):
    """Trains any network mapping x (B, T, D), or token ids (B, T), to logits (B, T, K) that
    has ``num_tags``.

    Loss and metrics run over every step whose tag is not ``PAD_TAG`` (-100). Logs
    ``{train,val,test}/loss``, token accuracy ``/acc``, macro ``/f1`` and ``val/acc_best``;
    when the tag names are BIO/BIOES chunk tags (``B-PER``, ``I-PER``, ``O``...), also
    entity-level ``/entity_precision``, ``/entity_recall`` and ``/entity_f1`` computed as
    CoNLL-2003's conlleval does (:mod:`rnnlab.tasks.entities`).

    Args:
        net, optimizer, scheduler: see :class:`RNNTask`.
        tag_names: the name of each tag in index order (filled in from the data at training
            time), stored in every checkpoint and used by predictions. None: 0..K-1.
    """

    monitor, monitor_mode = "val/acc", "max"
    BATCH = (("x", "BTD", "float"), ("tags", "BT", "int64"), ("lengths", "B", "int"))
    TOKEN_BATCH = (("ids", "BT", "int64"), ("tags", "BT", "int64"), ("lengths", "B", "int"))
    BATCH_REQUIRED = 2

    def __init__(self, net, optimizer, scheduler=None, tag_names: list | None = None):
        super().__init__(net, optimizer, scheduler, tag_names=None if tag_names is None else list(tag_names))
        if tag_names is not None and len(tag_names) != self.net.num_tags:
            raise ConfigError("tag_names", f"expected {self.net.num_tags} names (net.num_tags), got {len(tag_names)}")
        self.tag_names = None if tag_names is None else [str(t) for t in tag_names]
        self.entities = None
        if is_chunk_scheme(self.tag_names):
            self.entities = torch.nn.ModuleDict({split_key(stage): EntityScores(self.tag_names, PAD_TAG)
                                                 for stage in ("train", "val", "test")})

    @classmethod
    def batch_form(cls) -> str:
        """``(x (B, T, D) float or ids (B, T) int64, tags (B, T) int64[, lengths (B,) int])``."""
        def element(spec):
            return f"{spec[0]} {tuple_str(spec[1])} {spec[2]}"

        features, tokens = element(cls.BATCH[0]), element(cls.TOKEN_BATCH[0])
        return super().batch_form().replace(features, f"{features} or {tokens}", 1)

    @classmethod
    def batch_problem(cls, batch) -> str | None:
        """What keeps ``batch`` from being a feature batch, or a token-id batch when its
        first element is an integer tensor."""
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if isinstance(first, torch.Tensor) and not (first.is_floating_point() or first.is_complex()):
            return cls.form_problem(cls.TOKEN_BATCH, batch)
        return cls.form_problem(cls.BATCH, batch)

    def make_metrics(self) -> MetricCollection:
        n = self.net.num_tags
        return MetricCollection({
            "acc": Accuracy(task="multiclass", num_classes=n, ignore_index=PAD_TAG),
            "f1": F1Score(task="multiclass", num_classes=n, average="macro", ignore_index=PAD_TAG),
        })

    def loss_and_outputs(self, batch, stage):
        args, kwargs = self.net_inputs(batch)  # x (B, T, D) or ids (B, T) [, lengths (B,)]
        tags = batch[1]  # (B, T), PAD_TAG past each sequence's length
        logits = self.net(*args, **kwargs)  # (B, T, K)
        loss = F.cross_entropy(logits.flatten(0, 1), tags.flatten(), ignore_index=PAD_TAG)  # over (B*T, K)
        return loss, logits, tags, (tags != PAD_TAG).sum()

    def update_metrics(self, stage, preds, target) -> None:
        super().update_metrics(stage, preds.flatten(0, 1), target.flatten())  # (B*T, K), (B*T,)
        if self.entities is not None:
            self.entities[split_key(stage)].update(preds.argmax(dim=-1), target)  # (B, T), (B, T)

    def epoch_values(self, stage: str, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().epoch_values(stage, loss)
        if self.entities is not None:
            scores = self.entities[split_key(stage)]
            values.update({f"{stage}/{name}": value for name, value in scores.compute().items()})
            scores.reset()
        return values

    def names(self) -> list[str]:
        """Each tag's name, in index order."""
        return self.tag_names if self.tag_names is not None else [str(i) for i in range(self.net.num_tags)]

    def predict_step(self, batch, batch_idx) -> torch.Tensor:
        """Tag probabilities (B, T, K) of a batch whose inputs (and lengths) are the task's."""
        args, kwargs = self.net_inputs(batch)
        return F.softmax(self.net(*args, **kwargs), dim=-1)  # (B, T, K)
