"""Sampling text from a trained character model. ``scripts/generate.py`` wraps :func:`generate`."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from .errors import ConfigError

from .checkpoints import CheckpointError, load_task
from .tasks import LanguageModelTask
from .tasks.language_model import check_prompt, check_temperature


def generate(cfg: DictConfig) -> str:
    """Return (and print) ``cfg.prompt`` followed by ``cfg.max_new_tokens`` sampled characters."""
    check_temperature("temperature", cfg.temperature)
    device = check_device("device", cfg.get("device", "cpu"))
    task, _ = load_task(cfg.ckpt_path)
    if not isinstance(task, LanguageModelTask):
        raise CheckpointError(f"ckpt_path: expected a character language model checkpoint, "
                              f"got one of {type(task).__name__}")
    task.to(device)
    check_prompt("prompt", cfg.prompt, task.vocab)
    text = task.sample(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.seed, top_k=cfg.get("top_k"))
    print(text)
    return text


def check_device(key: str, device) -> torch.device:
    """The torch device ``device`` names, refused unless this machine has it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(key, f"expected a device such as cpu or cuda, got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, f"expected cpu, or cuda on a machine with a CUDA GPU; got {device!r}, "
                               "but no CUDA GPU is available on this machine")
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(key, f"expected cpu or cuda, got {device!r}")
    return parsed
