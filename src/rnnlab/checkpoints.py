"""Loading checkpoints as data: tensors and plain Python values only, never code.

Every checkpoint rnnlab reads goes through :func:`load_checkpoint`, which uses
``torch.load(weights_only=True)``: unpickling is restricted to tensors and plain types,
so a file crafted to run code when unpickled is refused instead of executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from hydra.utils import get_class

from .tasks.base import RNNTask


# A checkpoint's configs name classes to build (``_target_``). Building an arbitrary
# callable named by a file would be running code from the file, so only these prefixes
# are accepted.
ALLOWED_TARGETS = ("rnnlab.models.", "rnnlab.tasks.", "rnnlab.data.", "torch.optim.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason and the path."""


def check_targets(config, path, where: str = "") -> None:
    """Raise unless every ``_target_`` in a nested config is under :data:`ALLOWED_TARGETS`."""
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not (isinstance(target, str) and target.startswith(ALLOWED_TARGETS)):
            raise CheckpointError(f"refusing to load {str(path)!r}: {where or 'config'}._target_={target!r} "
                                  f"is not one of rnnlab's or torch.optim's classes")
        for key, value in config.items():
            check_targets(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_targets(value, path, f"{where}[{i}]")


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU, refusing anything but tensors and plain types."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: expected a checkpoint file, got {str(path)!r}, which does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain "
            f"Python values, which could run code when unpickled ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: truncated or corrupted ({first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    if "rnnlab" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} was not written by rnnlab (no 'rnnlab' entry)")
    return checkpoint


def load_task(path: str | Path) -> tuple[RNNTask, dict | None]:
    """Rebuild the trained task from a checkpoint alone: (task in eval mode, data config)."""
    checkpoint = load_checkpoint(path)
    check_targets(checkpoint["hyper_parameters"], path, "model")
    check_targets(checkpoint["rnnlab"].get("data"), path, "data")
    name = checkpoint["rnnlab"].get("task")
    task_cls = get_class(name) if isinstance(name, str) and name.startswith("rnnlab.tasks.") else None
    if task_cls is None or not issubclass(task_cls, RNNTask):
        raise CheckpointError(f"refusing to load {str(path)!r}: task {name!r} is not an rnnlab task class")
    task = task_cls(**checkpoint["hyper_parameters"])
    task.load_state_dict(checkpoint["state_dict"])
    task.data_config = checkpoint["rnnlab"].get("data")
    return task.eval(), task.data_config
