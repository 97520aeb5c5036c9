"""Building objects from Hydra configs, and the OmegaConf resolvers and stored configs that
rnnlab's configs use (importing this module registers them).

Resolvers:

- ``${rnnlab.monitor:<task _target_>}``: the task's main validation metric (``val/acc``...).
- ``${rnnlab.monitor_mode:<task _target_>}``: ``max`` or ``min`` for that metric.
- ``${rnnlab.mul:a,b}``: a * b, for a config value that is the product of two others.
- ``${rnnlab.cwd:}``: the absolute working directory. Unlike ``${hydra:runtime.cwd}`` it
  also resolves where Hydra's runtime config is not set yet, as in ``hydra.sweep.dir``.
- ``${rnnlab.required:<key>,<what>}``: a key the user must set; resolving it is an error saying so.
- ``${rnnlab.config_subdir:${ckpt_path},${resume_sweep}}``: ``hydra.output_subdir`` of a training run.
- ``${rnnlab.run_group:${task_name}}``, ``${rnnlab.run_name:${paths.output_dir}}``: a tracker's group of runs and run name.
- ``${rnnlab.sweep_dir:${resume_sweep},<new dir>}``: ``hydra.sweep.dir``, the resumed sweep's own when set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError, one_line


def instantiate_node(node, key: str, **kwargs):
    """``hydra.utils.instantiate`` whose errors name the config key instead of a chain of
    InstantiationExceptions: a ValueError or TypeError from the constructor becomes a
    :class:`ConfigError` for ``key`` (nested builds give ``model.net: ...``), and so does
    an interpolation that does not resolve (``model.net.hidden_size: Interpolation key
    'data.x' not found``)."""
    if OmegaConf.is_config(node):
        try:  # resolve in place first: Hydra resolves a copy, whose errors lose the key
            OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise ConfigError(err.full_key or key, one_line(err).removeprefix(f"{err.full_key}: ")) from None
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause: BaseException = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{key}.{cause.key}", cause.reason) from None
        argument = getattr(cause, "argument", None)  # rnnlab's checks name the argument they refuse
        if argument is not None and isinstance(node, Mapping) and argument in node:
            raise ConfigError(f"{key}.{argument}", str(cause)) from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            raise ConfigError(key, str(cause)) from None
        if isinstance(cause, ImportError):  # a _target_ that does not exist, or a missing package
            raise ConfigError(key, " ".join(str(cause).split())) from None
        raise


@contextmanager
def _quiet_hydra_utils():
    # hydra.utils.get_class logs every failed import at ERROR level before raising; the
    # caller turns the failure into one ConfigError line, so the log line would say it twice.
    logger = logging.getLogger("hydra.utils")
    level, logger.level = logger.level, logging.CRITICAL
    try:
        yield
    finally:
        logger.setLevel(level)


def class_path(cls: type) -> str:
    """``module.QualName`` of a class: what a config's ``_target_`` names it by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def target_class(node, key: str) -> type | None:
    """The class a config's ``_target_`` names (``hydra.utils.get_class``), or None for
    another callable (a factory function); a target that does not import is a ConfigError."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if target is None:
        return None
    with _quiet_hydra_utils():
        try:
            return get_class(str(target))
        except ValueError:  # importable, but not a class
            return None
        except Exception:  # hydra's import errors chain several exception types
            raise ConfigError(f"{key}._target_", f"expected an importable class, got {target!r}") from None


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {"model.net.hidden_size": 64, ...}; non-mapping values are leaves."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: dict = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _task_attr(target: str, attr: str):
    try:
        with _quiet_hydra_utils():
            cls = get_class(target)
    except Exception as err:  # hydra raises ImportError subclasses with a long chain
        raise ValueError(f"model._target_: cannot import task class {target!r}: {err}") from None
    if not hasattr(cls, attr):
        raise ValueError(f"model._target_: {target} is not an rnnlab task (it has no {attr!r})")
    return getattr(cls, attr)


def _required(key: str, what: str) -> None:
    """``${rnnlab.required:<key>,<what>}``: a value the config cannot do without. (A ``???`` in
    an experiment config does not work for this: merged over a group's default, OmegaConf
    keeps the default.)"""
    raise ValueError(f"expected {what}, got no value; this config requires it: add {key}=<value> to the command")


# Where Hydra writes a run's config (hydra.output_subdir). A run that resumes from a
# checkpoint writes it aside first (rnnlab.train moves it over .hydra/ once the resume is
# accepted), so that a refused or no-op resume leaves the run directory as it was.
CONFIG_SUBDIR = ".hydra"
RESUME_CONFIG_SUBDIR = ".hydra/resume"


def _run_group(task_name: str) -> str:
    """A tracker's experiment (MLflow) or group (W&B): ``<task_name>/<sweep>`` for the jobs of a
    sweep, so each sweep is one group of runs; ``<task_name>`` for a single run."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}/{os.path.basename(os.path.normpath(HydraConfig.get().sweep.dir))}"
    return str(task_name)


def _run_name(output_dir: str) -> str:
    """A tracker's run name, from the run's directory: ``<sweep>/<job number>`` in a sweep,
    else the run directory's name (its start time)."""
    parts = os.path.normpath(str(output_dir)).split(os.sep)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return "/".join(parts[-2:]) if multirun else parts[-1]


def _config_subdir(ckpt_path, resume_sweep=None) -> str:
    """Where Hydra writes a run's config: ``.hydra/``, or ``.hydra/resume/`` for a run that may
    resume (``ckpt_path`` set, or a job of a resumed sweep), moved over ``.hydra/`` by
    :func:`rnnlab.train.run` once the resume is accepted."""
    return CONFIG_SUBDIR if ckpt_path is None and resume_sweep is None else RESUME_CONFIG_SUBDIR


def register_resolvers() -> None:
    resolvers = {
        "rnnlab.monitor": lambda target: _task_attr(target, "monitor"),
        "rnnlab.monitor_mode": lambda target: _task_attr(target, "monitor_mode"),
        "rnnlab.mul": lambda a, b: a * b,
        "rnnlab.cwd": os.getcwd,
        "rnnlab.required": _required,
        "rnnlab.config_subdir": _config_subdir,
        "rnnlab.run_group": _run_group,
        "rnnlab.run_name": _run_name,
        "rnnlab.sweep_dir": lambda resume_sweep, new_dir: new_dir if resume_sweep is None else str(resume_sweep),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def register_configs() -> None:
    """Configs that YAML cannot express, in Hydra's ConfigStore.

    ``data_overrides``: a ``data:`` node that accepts any key from the command line
    (``data.path=...`` rather than ``+data.path=...``). ``conf/eval.yaml`` uses it: the data
    config comes from the checkpoint, so its keys are not known when Hydra composes.
    """
    node = OmegaConf.create({"data": {}})
    OmegaConf.set_struct(node.data, False)
    ConfigStore.instance().store(name="data_overrides", node=node)


register_resolvers()
register_configs()
