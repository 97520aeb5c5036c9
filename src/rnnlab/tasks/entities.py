"""Entity-level precision, recall and F1 for BIO/BIOES tags, computed as CoNLL-2003's
``conlleval`` script computes them.

A chunk (an entity, a phrase) is a maximal run of tags of one type: it starts at a ``B-``
or ``S-`` tag, at an ``I-`` or ``E-`` tag after ``O`` or after a chunk's end (``E-``,
``S-``), or where the type changes; it ends before ``O``, ``B-`` and ``S-``, after ``E-``
and ``S-``, and where the type changes. (``L-``/``U-`` of BILOU read as ``E-``/``S-``.) A
predicted chunk counts as correct only when a gold chunk has the same type, start and end.
Precision is correct / predicted chunks, recall correct / gold chunks, both over the whole
epoch (micro-averaged over types), F1 their harmonic mean.
"""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

CHUNK_TAG = re.compile(r"^[BIESLU]-.+$")
_PREFIX = {"L": "E", "U": "S"}  # BILOU read as BIOES


def is_chunk_scheme(tag_names: list[str] | None) -> bool:
    """Whether tags are BIO/BIOES chunk tags: every tag ``O`` or ``<prefix>-<type>``, with at
    least one chunk tag."""
    if not tag_names:
        return False
    return all(tag == "O" or CHUNK_TAG.match(tag) for tag in tag_names) and any(t != "O" for t in tag_names)


def _split(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER"; ("O", "") for "O" (and any tag that is not a chunk tag)."""
    if tag == "O" or not CHUNK_TAG.match(tag):
        return "O", ""
    prefix, kind = tag.split("-", 1)
    return _PREFIX.get(prefix, prefix), kind


def _ends(prev: str, prev_kind: str, tag: str, kind: str) -> bool:
    """Whether a chunk ended at the previous tag."""
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_kind != kind


def _starts(prev: str, prev_kind: str, tag: str, kind: str) -> bool:
    """Whether a chunk starts at this tag."""
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_kind != kind


def chunks(tags: list[str]) -> set[tuple[str, int, int]]:
    """The chunks of one sentence's tags as (type, first, last) positions."""
    found, start, prev, prev_kind = set(), None, "O", ""
    for i, tag in enumerate([*tags, "O"]):  # a final O closes the last chunk
        prefix, kind = _split(tag)
        if start is not None and _ends(prev, prev_kind, prefix, kind):
            found.add((prev_kind, start, i - 1))
            start = None
        if _starts(prev, prev_kind, prefix, kind):
            start = i
        prev, prev_kind = prefix, kind
    return found


class EntityScores(Metric):
    """Entity precision, recall and F1 over an epoch (see the module docstring).

    ``update(preds, target)`` takes tag indices (B, T) into ``tag_names``; target is -100
    (``ignore_index``) past each sentence's length. The counts are summed over batches and,
    under DDP, over processes.
    """

    full_state_update = False

    def __init__(self, tag_names: list[str], ignore_index: int = -100):
        super().__init__()
        self.tag_names, self.ignore_index = list(tag_names), ignore_index
        for name in ("correct", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        names = self.tag_names
        for pred_row, gold_row in zip(preds.tolist(), target.tolist()):
            valid = [i for i, g in enumerate(gold_row) if g != self.ignore_index]
            predicted = chunks([names[pred_row[i]] for i in valid])
            gold = chunks([names[gold_row[i]] for i in valid])
            self.correct += len(predicted & gold)
            self.predicted += len(predicted)
            self.gold += len(gold)

    def compute(self) -> dict[str, torch.Tensor]:
        correct, predicted, gold = self.correct.double(), self.predicted.double(), self.gold.double()
        precision = correct / predicted if predicted > 0 else torch.zeros((), dtype=torch.double)
        recall = correct / gold if gold > 0 else torch.zeros((), dtype=torch.double)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.zeros(())
        return {"entity_precision": precision.float(), "entity_recall": recall.float(), "entity_f1": f1.float()}
