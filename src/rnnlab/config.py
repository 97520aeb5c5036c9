"""OmegaConf resolvers used by rnnlab's configs; importing this module registers them.

- ``${rnnlab.monitor:<task _target_>}``: the task's main validation metric (``val/acc``...).
- ``${rnnlab.monitor_mode:<task _target_>}``: ``max`` or ``min`` for that metric.
- ``${rnnlab.mul:a,b}``: a * b (e.g. the number of tags of the tagging task).
- ``${rnnlab.cwd:}``: the absolute working directory. Unlike ``${hydra:runtime.cwd}`` it
  also resolves where Hydra's runtime config is not set yet, as in ``hydra.sweep.dir``.
"""

from __future__ import annotations

import os

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A config value that cannot be used, naming its key: ``model.net: expected hidden_size >= 1, got 0``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def instantiate_node(node, key: str, **kwargs):
    """``hydra.utils.instantiate`` whose errors name the config key instead of a chain of
    InstantiationExceptions: a ValueError or TypeError from the constructor becomes a
    :class:`ConfigError` for ``key`` (nested builds give ``model.net: ...``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause: BaseException = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{key}.{cause.key}", cause.reason) from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(key, str(cause)) from None
        raise


def _task_attr(target: str, attr: str):
    try:
        cls = get_class(target)
    except Exception as err:  # hydra raises ImportError subclasses with a long chain
        raise ValueError(f"model._target_: cannot import task class {target!r}: {err}") from None
    if not hasattr(cls, attr):
        raise ValueError(f"model._target_: {target} is not an rnnlab task (it has no {attr!r})")
    return getattr(cls, attr)


def register_resolvers() -> None:
    resolvers = {
        "rnnlab.monitor": lambda target: _task_attr(target, "monitor"),
        "rnnlab.monitor_mode": lambda target: _task_attr(target, "monitor_mode"),
        "rnnlab.mul": lambda a, b: a * b,
        "rnnlab.cwd": os.getcwd,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
