"""Predictions of a trained classifier or tagger on a new file. ``scripts/predict.py`` wraps
:func:`predict`:

    python scripts/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=new.npz output=predictions.csv

The model, and the data module that reads the file, are rebuilt from the checkpoint alone,
with what the data module learnt in training (class names, a vocabulary, feature
statistics), so the file is read and preprocessed exactly as the training data was. The
input is a file of the training data's format; its labels or tags are optional (when
present they are written beside the predictions, and must be ones training saw).

Written (by ``output``'s extension, ``.csv`` or ``.jsonl``), in the input's order:

- classifier: one row per sequence: ``id`` (the CSV id column's value, else the index in
  the file), ``prediction`` (the class as the training file wrote it), ``label`` when the
  input has labels, and each class's probability (CSV columns ``p_<class>``; JSON Lines a
  ``probabilities`` object).
- tagger: one row per token: ``sentence``, ``position``, ``token``, ``prediction``,
  ``probability`` (of the predicted tag), ``tag`` when the input has tags.

The file is written to a temporary file beside ``output`` and renamed into place, so a
failure never leaves half a file.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoints import check_targets, load_task, restore_data_state
from .config import instantiate_node, target_class
from .errors import ConfigError
from .tasks import ClassificationTask, TaggingTask
from .train import fill_model_from_data

log = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")


def predict(cfg: DictConfig) -> Path:
    """Write the predictions of checkpoint ``cfg.ckpt_path`` on file ``cfg.input`` to
    ``cfg.output``; return the output's path."""
    output = Path(str(cfg.output)).expanduser()
    if output.suffix.lower() not in FORMATS:
        raise ConfigError("output", f"expected a file ending in {' or '.join(FORMATS)}, got {str(output)!r}")
    if output.is_dir():
        raise ConfigError("output", f"expected a file to write, got {str(output)!r}, which is a directory")
    trusted = OmegaConf.select(cfg, "data._target_", default=None)
    task, data_config = load_task(cfg.ckpt_path, data_target=trusted)
    if not isinstance(task, (ClassificationTask, TaggingTask)):
        raise ConfigError("ckpt_path", f"expected a classifier or tagger checkpoint, got a {type(task).__name__}"
                                       + ("; sample from a language model with scripts/generate.py"
                                          if "Language" in type(task).__name__ else ""))
    data_cfg = OmegaConf.merge(data_config or {}, cfg.get("data") or {},
                               {"predict_path": os.path.abspath(os.path.expanduser(str(cfg.input)))})
    check_targets(OmegaConf.to_container(data_cfg), cfg.ckpt_path, "data", trusted=trusted)
    data_cls = target_class(data_cfg, "data")
    if data_cls is None or "predict_path" not in inspect.signature(data_cls).parameters:
        raise ConfigError("ckpt_path", f"this model was trained on {data_cfg.get('_target_')}, which reads no "
                                       "files to predict on; predict.py works with models trained on files "
                                       "(data=sequences, data=conll) or on data modules that take a predict_path")
    datamodule = instantiate_node(data_cfg, "data")
    restore_data_state(datamodule, task)
    datamodule.setup("predict")
    fill_model_from_data(OmegaConf.create(dict(task.hparams)), datamodule, source="checkpoint")

    trainer: L.Trainer = instantiate_node(cfg.trainer, "trainer", logger=False, callbacks=[],
                                          enable_checkpointing=False)
    batches = trainer.predict(task, dataloaders=datamodule.predict_dataloader())
    records = getattr(datamodule, "files", {}).get("predict")
    if isinstance(task, ClassificationTask):
        rows = classification_rows(torch.cat(batches), task.class_names, records)  # (N, C)
    else:
        rows = tagging_rows(batches, task.names(), records)
    write_rows(rows, output)
    log.info(f"Predictions: {len(rows)} rows written to {output}")
    return output


def classification_rows(probs: torch.Tensor, class_names: list | None, records) -> list[dict]:
    """One row per sequence from its class probabilities (N, C) and the input's records."""
    names = class_names if class_names is not None else list(range(probs.shape[1]))
    ids = getattr(records, "ids", None)
    labels = getattr(records, "labels", None)
    ids, labels = (None if a is None else a.tolist() for a in (ids, labels))  # Python values, for JSON
    predicted = probs.argmax(dim=1).tolist()
    rows = []
    for i, p in enumerate(probs.tolist()):
        row = {"id": ids[i] if ids is not None else i, "prediction": names[predicted[i]]}
        if labels is not None:
            row["label"] = labels[i]
        row["probabilities"] = {str(name): round(q, 6) for name, q in zip(names, p)}
        rows.append(row)
    return rows


def tagging_rows(batches: list[torch.Tensor], tag_names: list[str], records) -> list[dict]:
    """One row per token from each batch's tag probabilities (B, T, K) and the input's sentences."""
    tokens = getattr(records, "tokens", None)
    tags = getattr(records, "tags", None)
    rows, sentence = [], 0
    for probs in batches:  # (B, T_b, K), in the input's order
        best, tag = probs.max(dim=-1)  # (B, T_b)
        for b in range(probs.shape[0]):
            length = len(tokens[sentence]) if tokens is not None else probs.shape[1]
            for t in range(length):
                row = {"sentence": sentence, "position": t,
                       "token": tokens[sentence][t] if tokens is not None else "",
                       "prediction": tag_names[int(tag[b, t])], "probability": round(float(best[b, t]), 6)}
                if tags is not None:
                    row["tag"] = tags[sentence][t]
                rows.append(row)
            sentence += 1
    return rows


def write_rows(rows: list[dict], output: Path) -> None:
    """``rows`` as CSV (a ``probabilities`` object becomes ``p_<name>`` columns) or JSON Lines,
    written to a temporary file beside ``output`` and renamed into place."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as err:
        raise ConfigError("output", f"cannot write {str(output)!r} ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            if output.suffix.lower() == ".jsonl":
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                flat = [{**{k: v for k, v in row.items() if k != "probabilities"},
                         **{f"p_{name}": p for name, p in row.get("probabilities", {}).items()}} for row in rows]
                writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["prediction"])
                writer.writeheader()
                writer.writerows(flat)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
