"""Checkpoints as data, never code: loading, atomic saving, and checks that say what is wrong.

Every checkpoint rnnlab reads (eval, generate, analyze, resuming a run, testing the best
checkpoint) goes through :func:`read_checkpoint`, which uses ``torch.load(weights_only=True)``:
unpickling is restricted to tensors and plain Python values, so a file crafted to run code
when unpickled is refused instead of executed. Lightning's own loading goes through
:class:`AtomicCheckpointIO`, which reads the same way, and which writes every checkpoint
to a temporary file beside the target and renames it into place, so a crash or a full disk
never leaves a half-written checkpoint where the previous good one was.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .config import class_path, flatten
from .errors import ConfigError, first_line
from .tasks.base import RNNTask


# A checkpoint's configs name classes to build (``_target_``). Building an arbitrary
# callable named by a file would be running code from the file, so only these prefixes
# are accepted.
ALLOWED_TARGETS = ("rnnlab.models.", "rnnlab.tasks.", "rnnlab.data.", "torch.optim.")
# What a checkpoint may hold besides tensors: the types torch.load(weights_only=True) rebuilds.
PLAIN_MAPPINGS = (dict, OrderedDict, Counter)
PLAIN_CONTAINERS = (list, tuple, set, torch.Size)
PLAIN_VALUES = (str, int, float, bool, complex, bytes, bytearray, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used or written, with the reason and the path."""


def _reason(err: BaseException) -> str:
    """The first sentence of an error message (torch's run on for a paragraph)."""
    return first_line(err, with_type=False).split(". ")[0].rstrip(".")


def check_targets(config, path, where: str = "", trusted: str | None = None) -> None:
    """Raise unless every ``_target_`` in a nested config is under :data:`ALLOWED_TARGETS`, or
    is ``trusted``: a class the user named on the command line (``data._target_=mydata.Sines``)."""
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and target != trusted and not (isinstance(target, str)
                                                              and target.startswith(ALLOWED_TARGETS)):
            hint = (f"; to use a data class of your own, name it on the command line: data._target_={target}"
                    if where == "data" else "")
            raise CheckpointError(f"refusing to load {str(path)!r}: {where or 'config'}._target_={target!r} "
                                  f"is not one of rnnlab's or torch.optim's classes{hint}")
        for key, value in config.items():
            check_targets(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_targets(value, path, f"{where}[{i}]")


def check_plain(value, where: str = "checkpoint") -> None:
    """Raise unless ``value`` is built only of what ``torch.load(weights_only=True)`` rebuilds
    (:data:`PLAIN_CONTAINERS`, :data:`PLAIN_VALUES`, tensors, dtypes and devices), so that
    a checkpoint that saves can also be loaded."""
    if type(value) in PLAIN_MAPPINGS:
        for key, item in value.items():
            check_plain(key, f"{where} key")
            check_plain(item, f"{where}.{key}")
    elif type(value) in PLAIN_CONTAINERS:
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not (type(value) in PLAIN_VALUES or isinstance(value, (torch.Tensor, torch.dtype, torch.device))):
        raise CheckpointError(f"cannot save {where}: it holds a {class_path(type(value))}; "
                              "checkpoints hold only tensors and plain Python values (dict, list, tuple, str, "
                              "int, float, bool, None), which load without running code")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear error per way a file can be unusable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"ckpt_path: expected a checkpoint file, got {str(path)!r}, which is a directory")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: expected a checkpoint file, got {str(path)!r}, which does not exist")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: permission denied")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: the file is empty")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch reports both a forbidden object and plain garbage as "Weights only load
        # failed"; the line that names a GLOBAL is the one that tells them apart.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if refused:
            refused = refused.removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".")
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it holds objects other than tensors and plain "
                f"Python values, which could run code when unpickled ({refused})"
            ) from None
        reason = next((line for line in lines if line.startswith("Unsupported")), _reason(err))
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: truncated or corrupted ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        # The file exists and is readable (checked above), so even an OSError here comes
        # from the zip reader meeting a damaged archive.
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _reason(err)
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: truncated or corrupted ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def load_checkpoint(path: str | Path) -> dict:
    """Read an rnnlab checkpoint onto the CPU, refusing anything but tensors and plain types."""
    checkpoint = read_checkpoint(path)
    missing = [key for key in ("rnnlab", "hyper_parameters") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{str(path)!r} was not written by rnnlab (no {' or '.join(map(repr, missing))} entry)")
    return checkpoint


# Task arguments renamed since a checkpoint may have been written: old name -> new name.
RENAMED_HPARAMS = {"sample_length": "sample_max_new_tokens"}


def load_task(path: str | Path, data_target: str | None = None) -> tuple[RNNTask, dict | None]:
    """Rebuild the trained task from a checkpoint alone: (task in eval mode, data config).

    ``task.data_state`` is what the data module learnt in training (its ``state_dict``, which
    Lightning keeps in the checkpoint under the class's name), or None; see
    :func:`restore_data_state`. ``data_target`` is a data class the user named, accepted in
    the data config besides rnnlab's own.
    """
    checkpoint = load_checkpoint(path)
    check_targets(checkpoint["hyper_parameters"], path, "model")
    check_targets(checkpoint["rnnlab"].get("data"), path, "data", trusted=data_target)
    name = checkpoint["rnnlab"].get("task")
    try:
        task_cls = get_class(name) if isinstance(name, str) and name.startswith("rnnlab.tasks.") else None
    except ImportError:
        task_cls = None
    if not (isinstance(task_cls, type) and issubclass(task_cls, RNNTask)):
        raise CheckpointError(f"refusing to load {str(path)!r}: task {name!r} is not an rnnlab task class")
    hparams = {RENAMED_HPARAMS.get(key, key): value for key, value in checkpoint["hyper_parameters"].items()}
    try:
        task = task_cls(**hparams)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} holds hyperparameters that do not build a "
                              f"{task_cls.__name__}: {_reason(err)}") from None
    try:
        task.on_load_checkpoint(checkpoint)  # as Lightning calls it before loading the weights
        task.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise CheckpointError(f"{str(path)!r}: its weights do not fit the model its hyperparameters "
                              f"describe ({details})") from None
    task.data_config = checkpoint["rnnlab"].get("data")
    target = (task.data_config or {}).get("_target_")
    task.data_state = checkpoint.get(target.rsplit(".", 1)[-1]) if isinstance(target, str) else None
    return task.eval(), task.data_config


def restore_data_state(datamodule, task: RNNTask) -> None:
    """Give a data module rebuilt from a checkpoint's data config what it learnt in training
    (a vocabulary, class names, feature statistics: ``task.data_state`` from
    :func:`load_task`), as Lightning's own resume does, before its ``setup``; so a new file is
    read and preprocessed exactly as the training data was."""
    state = getattr(task, "data_state", None)
    if state and hasattr(datamodule, "load_state_dict"):
        datamodule.load_state_dict(state)


# ------------------------------------------------------------------ mismatches
def describe_difference(key: str, ours, theirs, our_name: str, their_name: str) -> str:
    """``key: <our_name> X, <their_name> Y`` (no ``key:`` if key is empty); vocabularies
    (a key named ``vocab``) are compared character by character."""
    prefix = f"{key}: " if key else ""
    vocab = key.rsplit(".", 1)[-1] == "vocab"
    if vocab and isinstance(ours, str) and isinstance(theirs, str) and max(len(ours), len(theirs)) > 20:
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        if not only_ours and not only_theirs:
            return f"{prefix}the same {len(ours)} characters in a different order"
        return (f"{prefix}{our_name} has {len(ours)} characters, {their_name} {len(theirs)}; "
                f"only in {our_name}: {''.join(only_ours)!r}, only in {their_name}: {''.join(only_theirs)!r}")
    return f"{prefix}{our_name} {ours!r}, {their_name} {theirs!r}"


def check_same_task(checkpoint: dict, task_cls: type, path: str | Path) -> None:
    """Raise unless ``checkpoint`` (as :func:`load_checkpoint` returns it) was trained by a
    ``task_cls`` task: a resume goes on with the same task, and comparing a classifier's
    settings with a language model's says nothing."""
    saved = checkpoint["rnnlab"].get("task")
    if saved != class_path(task_cls):
        saved_net = (checkpoint["hyper_parameters"].get("net") or {}).get("_target_", "?")
        raise CheckpointError(f"ckpt_path: {str(path)!r} is a checkpoint of another task: "
                              f"{str(saved).rsplit('.', 1)[-1]} ({saved_net}), while this run trains a "
                              f"{task_cls.__name__}; choose the model= of the run it comes from")


# What a resumed run may change: when it stops, and how progress is shown. Anything else
# (model, optimizer, schedule, data, seed, devices, precision) would not continue the run
# that the checkpoint holds, so a resume refuses it.
RESUMABLE_CHANGES = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.min_epochs", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.default_root_dir",
    "data.num_workers", "model.sample_",  # the validation samples' prompt, length, temperature and seed
)
_MODEL_KEYS = ("model.net", "model.vocab", "model.class_names", "model.tag_names")  # what the weights mean


def _settings(model: dict | None, data: dict | None, run: dict | None) -> dict:
    flat = flatten({"model": model}) if model else {}
    if data is not None:
        flat.update(flatten({"data": data}))
    if run is not None:
        flat.update(flatten({"trainer": run.get("trainer")}))
        flat["seed"] = run.get("seed")
        if run.get("budget_schedule") is not None:
            flat.update(flatten({"callbacks": {"budget_schedule": run["budget_schedule"]}}))
    return flat


def check_resumable(checkpoint: dict, task: RNNTask, path: str | Path) -> None:
    """Raise, listing every difference, unless this run continues the one ``checkpoint`` (as
    :func:`load_checkpoint` returns it) holds.

    First the model (network config and vocabulary): a difference there is a different
    model. Then every other setting the checkpoint recorded (optimizer, schedule, data,
    trainer, seed): a difference there would be recorded as the run's setting without being
    what the restored optimizer and schedule use, so only :data:`RESUMABLE_CHANGES` may
    differ (``trainer.max_epochs=20`` extends a run that has no schedule tied to it; with
    ``callbacks.budget_schedule``, whose learning rate follows the share of the budget spent,
    the budget may not change either).
    Checkpoints that recorded fewer settings are compared on what they hold.
    """
    check_same_task(checkpoint, type(task), path)
    info = checkpoint["rnnlab"]
    recorded = info.get("run") is not None  # older checkpoints hold the model settings only
    saved = _settings(checkpoint["hyper_parameters"], info.get("data") if recorded else None, info.get("run"))
    current = _settings(dict(task.hparams), task.data_config if recorded else None,
                        task.run_config if recorded else None)
    resumable = RESUMABLE_CHANGES
    if any(key.startswith("callbacks.budget_schedule") for key in (*saved, *current)):
        # the learning rate follows the share of the budget spent: a longer budget is another schedule
        resumable = tuple(key for key in RESUMABLE_CHANGES if key not in ("trainer.max_epochs", "trainer.max_steps"))
    differing = [key for key in sorted(set(saved) | set(current))
                 if saved.get(key) != current.get(key) and not key.startswith(resumable)]
    model = [key for key in differing if key.startswith(_MODEL_KEYS)]
    if model:
        raise CheckpointError(f"ckpt_path: {str(path)!r} holds a different model than this run's config: " + "; ".join(
            describe_difference(key, saved.get(key), current.get(key), "checkpoint", "config") for key in model))
    if differing:
        raise CheckpointError(
            f"ckpt_path: resuming {str(path)!r} would change settings the run was trained with: " + "; ".join(
                describe_difference(key, saved.get(key), current.get(key), "checkpoint", "config")
                for key in differing)
            + ". A resume continues the run as it was (only "
            + ("trainer.max_epochs, trainer.max_steps, " if "trainer.max_epochs" in resumable else "")
            + "trainer.min_epochs and what is shown may change); start a new run for other settings")


def epochs_done(checkpoint: dict) -> int:
    """How many training epochs the run had finished when ``checkpoint`` was saved."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", -1)) + 1


# ------------------------------------------------------------------ writing
def check_writable(directory: str | Path, key: str) -> None:
    """Raise a :class:`ConfigError` for ``key`` unless files can be created in ``directory``."""
    directory = Path(directory)
    blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(key, f"expected a writable directory, got {str(directory)!r}, but {str(blocker)!r} "
                               "is a file")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(key, f"expected a writable directory, got {str(directory)!r} "
                               f"({err.strerror or _reason(err)})") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer for rnnlab runs.

    Saving: the checkpoint must hold only plain types (:func:`check_plain`); it is written to
    a temporary file in the target's directory, flushed to disk, then renamed over the
    target (``os.replace`` is atomic on one file system). A kill, a full disk or a
    read-only directory leaves the previous checkpoint as it was, and the error names the
    file. Loading: :func:`read_checkpoint`, always with ``weights_only=True``.
    """

    def __init__(self):
        mask = os.umask(0)
        os.umask(mask)
        self._mode = 0o666 & ~mask  # what a plainly created file would get

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"expected storage_options=None for AtomicCheckpointIO, got {storage_options!r}")
        path = Path(path)
        check_plain(checkpoint, f"checkpoint {str(path)!r}")
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, self._mode)
            os.replace(tmp, path)
        except OSError as err:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise CheckpointError(f"cannot save checkpoint {str(path)!r}: {err.strerror or _reason(err)}; "
                                  "the checkpoint previously saved there, if any, is unchanged") from None

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location)
