"""Sampling text from a trained character model. ``scripts/generate.py`` wraps :func:`generate`."""

from __future__ import annotations

from omegaconf import DictConfig

from .checkpoints import CheckpointError, load_task
from .config import ConfigError
from .tasks import LanguageModelTask


def generate(cfg: DictConfig) -> str:
    """Return (and print) ``cfg.prompt`` followed by ``cfg.max_new_tokens`` sampled characters."""
    temperature = cfg.temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError("temperature", f"expected a number > 0, got {temperature!r}")
    task, _ = load_task(cfg.ckpt_path)
    if not isinstance(task, LanguageModelTask):
        raise CheckpointError(f"ckpt_path: expected a character language model checkpoint, "
                              f"got one of {type(task).__name__}")
    task.to(cfg.get("device", "cpu"))
    missing = sorted(set(cfg.prompt) - set(task.vocab))
    if missing or not cfg.prompt:
        raise ValueError(f"prompt: expected non-empty text over the model's {len(task.vocab)}-character "
                         f"vocabulary, got {cfg.prompt!r} (characters not in it: {missing})")
    text = task.sample(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.seed, top_k=cfg.get("top_k"))
    print(text)
    return text
