"""Sampling text from a trained character model. ``scripts/generate.py`` wraps :func:`generate`."""

from __future__ import annotations

from omegaconf import DictConfig

from .checkpoints import CheckpointError, load_task
from .tasks import LanguageModelTask
from .tasks.language_model import check_prompt, check_temperature


def generate(cfg: DictConfig) -> str:
    """Return (and print) ``cfg.prompt`` followed by ``cfg.max_new_tokens`` sampled characters."""
    check_temperature("temperature", cfg.temperature)
    task, _ = load_task(cfg.ckpt_path)
    if not isinstance(task, LanguageModelTask):
        raise CheckpointError(f"ckpt_path: expected a character language model checkpoint, "
                              f"got one of {type(task).__name__}")
    task.to(cfg.get("device", "cpu"))
    check_prompt("prompt", cfg.prompt, task.vocab)
    text = task.sample(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.seed, top_k=cfg.get("top_k"))
    print(text)
    return text
