"""Errors that name their config key, and the scripts' one-line error report.

A bad value a user can type ends the run with ``Error: <key>: expected ..., got ...`` on
stderr and exit status 1 (:func:`report_errors`), not a traceback; ``RNNLAB_DEBUG=1`` (or
Hydra's ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
"""

from __future__ import annotations

import linecache
import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

# Interrupted runs exit like any program stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_STATUS = 130

# Lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates, at every run;
# pyproject.toml filters the same message for the tests.
KNOWN_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",)
# Lightning's hints at every run that nothing in an rnnlab run calls for: an advertisement
# for its cloud logger, and that rnnlab's own model summary replaces Lightning's default.
KNOWN_LOG_LINES = ("💡 Tip: For seamless cloud logging", "Trainer already configured with model summary callbacks")


class _DropKnownLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KNOWN_LOG_LINES)


class ConfigError(ValueError):
    """A config value that cannot be used, naming its key: ``model.net.hidden_size: expected hidden_size >= 1, got 0``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


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

    Warnings and log lines from other libraries that a user cannot act on
    (:data:`KNOWN_WARNINGS`, :data:`KNOWN_LOG_LINES`) are not shown. Anything else is a bug and keeps its traceback; so does everything with
    ``RNNLAB_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` set. In a multirun, errors go on to the
    launcher, which records the failed job and runs the next one (or, with
    ``fail_fast=true``, skips the rest and reports the error when the sweep ends).
    """
    lightning_log, drop = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _DropKnownLines()
    lightning_log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
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
            raise  # the launcher records the job's failure and goes on (see rnnlab.train.run)
        if not (isinstance(err, OmegaConfBaseException) or (isinstance(err, USER_ERRORS) and _raised_by_rnnlab(err))):
            raise
        print(f"Error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    finally:
        lightning_log.removeFilter(drop)


def first_line(err: BaseException, with_type: bool = True) -> str:
    """The first line of the error's message, after ``<ErrorType>: `` unless ``with_type`` is
    False (result.json and the sweep summary record it with the type)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    if not with_type:
        return line or type(err).__name__
    return f"{type(err).__name__}: {line}".rstrip(": ")
