"""Config errors that name their key, the scripts' one-line error report, and the OmegaConf
resolvers used by rnnlab's configs (importing this module registers them).

A bad value a user can type ends the run with ``Error: <key>: expected ..., got ...`` on
stderr and exit status 1 (:func:`report_errors`), not a traceback; ``RNNLAB_DEBUG=1`` (or
Hydra's ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.

Resolvers:

- ``${rnnlab.monitor:<task _target_>}``: the task's main validation metric (``val/acc``...).
- ``${rnnlab.monitor_mode:<task _target_>}``: ``max`` or ``min`` for that metric.
- ``${rnnlab.mul:a,b}``: a * b (e.g. the number of tags of the tagging task).
- ``${rnnlab.cwd:}``: the absolute working directory. Unlike ``${hydra:runtime.cwd}`` it
  also resolves where Hydra's runtime config is not set yet, as in ``hydra.sweep.dir``.
- ``${rnnlab.required:<what>}``: a key the user must set; resolving it is an error saying so.
- ``${rnnlab.config_subdir:${ckpt_path}}``: ``hydra.output_subdir`` of a training run.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

# Interrupted runs exit like any program stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_STATUS = 130


class ConfigError(ValueError):
    """A config value that cannot be used, naming its key: ``model.net: expected hidden_size >= 1, got 0``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


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


# Errors that are about the user's input rather than a bug: reported in one line when
# rnnlab raised them on purpose (see report_errors).
USER_ERRORS = (ValueError, TypeError, OSError, ArithmeticError, RuntimeError)


def _raised_by_rnnlab(err: BaseException) -> bool:
    """Whether a ``raise`` statement in rnnlab's code raised ``err``: a check made on purpose.
    An error that a library call inside rnnlab's code raised (a torch operation failing in
    a recurrence, say) is a bug, and keeps its traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    if not Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def one_line(err: BaseException) -> str:
    """The error's message on one line; OmegaConf errors lead with the key they concern."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if isinstance(err, OmegaConfBaseException):
        lines = [line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type="))]
        if lines and isinstance(err, InterpolationResolutionError):  # what a resolver raised, not who relayed it
            lines[0] = re.sub(r"^\w+ raised while resolving interpolation: ", "", lines[0])
        if getattr(err, "full_key", None):
            lines.insert(0, f"{err.full_key}:")
    return " ".join(lines) or type(err).__name__


@contextmanager
def report_errors():
    """For the scripts: end with one line on stderr instead of a traceback.

    - a check rnnlab makes (bad config value, data file or checkpoint, a diverged loss) or
      an OmegaConf interpolation error: ``Error: <message>``, exit status 1;
    - an interrupted run (Ctrl-C): ``Interrupted: <what was saved>``, exit status 130.

    Anything else is a bug and keeps its traceback; so does everything with
    ``RNNLAB_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` set. In a multirun, errors go on to the
    launcher, which records the failed job and runs the next one (or, with
    ``fail_fast=true``, skips the rest and reports the error when the sweep ends).
    """
    try:
        yield
    except KeyboardInterrupt as err:
        if os.environ.get("RNNLAB_DEBUG") or os.environ.get("HYDRA_FULL_ERROR"):
            raise
        print(f"Interrupted: {err}" if str(err) else "Interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except Exception as err:
        if os.environ.get("RNNLAB_DEBUG") or os.environ.get("HYDRA_FULL_ERROR"):
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records the job's failure and goes on (see rnnlab.sweeps)
        if not (isinstance(err, OmegaConfBaseException) or (isinstance(err, USER_ERRORS) and _raised_by_rnnlab(err))):
            raise
        print(f"Error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)


def _task_attr(target: str, attr: str):
    try:
        cls = get_class(target)
    except Exception as err:  # hydra raises ImportError subclasses with a long chain
        raise ValueError(f"model._target_: cannot import task class {target!r}: {err}") from None
    if not hasattr(cls, attr):
        raise ValueError(f"model._target_: {target} is not an rnnlab task (it has no {attr!r})")
    return getattr(cls, attr)


def _required(what: str, *, _node_) -> None:
    """``${rnnlab.required:<what>}``: a value the config cannot do without. (A ``???`` in an
    experiment config does not work for this: merged over a group's default, OmegaConf
    keeps the default.)"""
    key = _node_._get_full_key(None)
    raise ValueError(f"expected {what}, got no value; this config requires it: add {key}=<value> to the command")


# Where Hydra writes a run's config (hydra.output_subdir). A run that resumes from a
# checkpoint writes it aside first (rnnlab.train moves it over .hydra/ once the resume is
# accepted), so that a refused or no-op resume leaves the run directory as it was.
CONFIG_SUBDIR = ".hydra"
RESUME_CONFIG_SUBDIR = ".hydra/resume"


def register_resolvers() -> None:
    resolvers = {
        "rnnlab.monitor": lambda target: _task_attr(target, "monitor"),
        "rnnlab.monitor_mode": lambda target: _task_attr(target, "monitor_mode"),
        "rnnlab.mul": lambda a, b: a * b,
        "rnnlab.cwd": os.getcwd,
        "rnnlab.required": _required,
        "rnnlab.config_subdir": lambda ckpt_path: CONFIG_SUBDIR if ckpt_path is None else RESUME_CONFIG_SUBDIR,
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
