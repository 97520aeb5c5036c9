"""OmegaConf resolvers used by rnnlab's configs; importing this module registers them.

- ``${rnnlab.monitor:<task _target_>}``: the task's main validation metric (``val/acc``...).
- ``${rnnlab.monitor_mode:<task _target_>}``: ``max`` or ``min`` for that metric.
- ``${rnnlab.mul:a,b}``: a * b (e.g. the number of tags of the tagging task).
"""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import OmegaConf


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
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
