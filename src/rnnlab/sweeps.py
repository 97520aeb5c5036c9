"""Sweeps: one result file per job, failures that do not end the sweep, one summary per sweep.

Every run of ``scripts/train.py`` goes through :func:`run_job`, which writes
``result.json`` into the job's output directory: its overrides, status (ok, failed,
skipped or interrupted, with the error's first line), final metrics and wall time. In a
multirun a failing job (a bad value, a NaN loss) is recorded and the sweep goes on, unless
``fail_fast=true``; Ctrl-C ends the sweep.

When a multirun ends, Hydra calls :class:`SweepSummary` (registered in
``conf/hydra/default.yaml``), which writes ``summary.csv``, ``summary.md`` and
``summary.png`` into the sweep directory. ``scripts/summarize.py <sweep_dir>`` does the
same for any sweep directory afterwards.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .config import RESUME_CONFIG_SUBDIR
from .train import RESULT_FILE, JobSkipped, RunAlreadyFinished, cpu_processes, train

log = logging.getLogger(__name__)


def first_line(err: BaseException) -> str:
    """``<ErrorType>: <first line of its message>``, as result.json and the summary record it."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _set_threads(cfg: DictConfig) -> None:
    """Give each of n parallel jobs (joblib launcher), or each of n CPU DDP processes, 1/n of
    the cores, unless ``threads`` is set."""
    threads = cfg.get("threads")
    if threads is None and HydraConfig.initialized():
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
        if isinstance(n_jobs, int) and n_jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
    processes = cpu_processes(cfg)
    if threads is None and processes > 1:
        threads = max(1, (os.cpu_count() or 1) // processes)
    if threads is not None:
        torch.set_num_threads(int(threads))


class _ResumedConfig:
    """Hydra's record of a resuming run (``.hydra/``), written aside by Hydra
    (``hydra.output_subdir`` is ``.hydra/resume`` when ``ckpt_path`` is set, see
    ``conf/train.yaml``): moved over ``.hydra/`` once the resume is accepted, removed if it
    is refused, so the run directory always describes what the run did."""

    def __init__(self):
        self.staged = None
        if HydraConfig.initialized() and HydraConfig.get().output_subdir == RESUME_CONFIG_SUBDIR:
            self.staged = Path(HydraConfig.get().runtime.output_dir) / RESUME_CONFIG_SUBDIR

    @rank_zero_only
    def accept(self) -> None:
        if self.staged is not None and self.staged.is_dir():
            for path in self.staged.iterdir():
                os.replace(path, self.staged.parent / path.name)
            self.staged.rmdir()

    @rank_zero_only
    def discard(self) -> None:
        if self.staged is not None and self.staged.is_dir():
            shutil.rmtree(self.staged)


def run_job(cfg: DictConfig) -> float | None:
    """Train one job and record its result; return the optimized metric (None if it did not run).

    Outside a multirun, errors propagate as usual; in a multirun the job is recorded as
    failed and the sweep goes on (with ``fail_fast=true`` the later jobs are skipped). A resume
    (``ckpt_path``) that is refused before training starts, or that finds its run already
    finished, leaves the run directory as it was: no result.json, no new .hydra/ config.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    # Unresolved: an override such as model.net.hidden_size=${data.x} is text here, not an interpolation.
    overrides = (OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
                 if HydraConfig.initialized() else [])
    result: dict[str, Any] = {"overrides": overrides, "optimized_metric": cfg.get("optimized_metric"),
                              "status": "ok", "error": "", "value": None, "metrics": {}}
    start = time.perf_counter()
    resumed = _ResumedConfig()
    started = False

    def before_fit() -> None:
        nonlocal started
        started = True
        resumed.accept()

    _set_threads(cfg)
    try:
        if multirun and cfg.get("fail_fast", False):
            _stop_if_a_job_failed(cfg)
        metrics, value = train(cfg, before_fit=before_fit)
        result.update(metrics={k: v for k, v in metrics.items() if k.startswith(("train/", "val/", "test/"))},
                      value=value)
        if value is not None and not math.isfinite(value):
            raise FloatingPointError(f"optimized metric {result['optimized_metric']} is {value}")
    except RunAlreadyFinished as done:
        resumed.discard()
        print(f"Nothing to do: {done}", flush=True)
        recorded = done.result.get("metrics", {})
        if recorded:
            print("Recorded metrics:\n" + "\n".join(f"  {k:<20} {v:.4f}" for k, v in sorted(recorded.items())),
                  flush=True)
        return done.result.get("value")
    except KeyboardInterrupt as err:
        result.update(status="interrupted", error=str(err) or "KeyboardInterrupt", value=None)
        raise
    except JobSkipped as err:
        result.update(status="skipped", error=str(err))
        log.warning(f"Skipped: {err}")
        if not multirun:
            raise
    except Exception as err:
        result.update(status="failed", error=first_line(err), value=None)
        if not multirun:
            raise
        if cfg.get("fail_fast", False):
            log.error(f"Job failed; fail_fast=true skips the rest of the sweep: {first_line(err)}")
        else:
            log.error(f"Job failed (the sweep goes on; fail_fast=true stops it): {first_line(err)}")
    finally:
        if resumed.staged is not None and not started:
            resumed.discard()  # a resume refused before training: the run directory stays as it was
        else:
            result["wall_time_s"] = round(time.perf_counter() - start, 2)
            _write_result(cfg, result)
    return result["value"]


def _stop_if_a_job_failed(cfg: DictConfig) -> None:
    """With fail_fast, launchers that run a whole batch of jobs (Hydra's basic launcher does)
    still call the jobs after a failure; those jobs end at once instead of training."""
    for path in Path(HydraConfig.get().sweep.dir).glob(f"*/{RESULT_FILE}"):
        if json.loads(path.read_text())["status"] == "failed":
            raise JobSkipped(f"job {path.parent.name} failed and fail_fast=true")


@rank_zero_only
def _write_result(cfg: DictConfig, result: dict) -> None:
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RESULT_FILE).write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------ summary
def _swept_parameters(rows: list[dict], searched: list[str]) -> list[str]:
    """Override keys whose value differs between jobs or that a search varied, in first-seen order."""
    values: dict[str, set] = {}
    for row in rows:
        for key, value in row["params"].items():
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1 or k in searched]


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    params = {}
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        params[key] = value
    return params


def load_results(sweep_dir: str | Path) -> list[dict]:
    """Rows for every job directory of a sweep (``<sweep_dir>/<n>/result.json``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        reason = "is a file" if sweep_dir.exists() else "does not exist"
        raise ValueError(f"expected a sweep directory (one sub-directory with {RESULT_FILE} per job), "
                         f"got {str(sweep_dir)!r}, which {reason}")
    rows = []
    for path in sorted(sweep_dir.glob(f"*/{RESULT_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {str(path)!r}: not a result file ({err})") from None
        rows.append({"job": path.parent.name, "params": _parse_overrides(result["overrides"]), **result})
    return rows


def _sort_key(row: dict, maximize: bool):
    status_rank = {"ok": 0, "failed": 1, "interrupted": 1, "skipped": 2}[row["status"]]
    value = row["value"]
    if value is None:
        return (status_rank, math.inf, row["job"])
    return (status_rank, -value if maximize else value, row["job"])


def _maximize(metric: str | None) -> bool:
    return not (metric and any(word in metric for word in ("loss", "bpc", "ppl")))


def summarize(sweep_dir: str | Path) -> list[dict]:
    """Write summary.csv, summary.md and summary.png for a sweep; return the sorted rows."""
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    if not rows:
        raise ValueError(f"expected a sweep directory (one sub-directory with {RESULT_FILE} per job), "
                         f"got {str(sweep_dir)!r}, which has none")
    metric = next((r["optimized_metric"] for r in rows if r["optimized_metric"]), None)
    maximize = _maximize(metric)
    rows.sort(key=lambda r: _sort_key(r, maximize))
    best = _optuna_best(sweep_dir)
    swept = _swept_parameters(rows, list(best["best_params"]) if best else [])
    metric_names = sorted({k for r in rows for k in r["metrics"] if k.startswith(("val/", "test/"))})

    header = ["job", *swept, "status", metric or "value", *[m for m in metric_names if m != metric],
              "wall_time_s", "error"]
    table = []
    for r in rows:
        value = r["value"] if r["value"] is not None else ""
        table.append([r["job"], *[r["params"].get(p, "") for p in swept], r["status"], value,
                      *[r["metrics"].get(m, "") for m in metric_names if m != metric], r["wall_time_s"], r["error"]])

    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])

    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(rows)} jobs: " + ", ".join(f"{sum(r['status'] == s for r in rows)} {s}"
                                                for s in ("ok", "failed", "skipped", "interrupted")
                                                if s != "interrupted" or any(r["status"] == s for r in rows)) + ". "
             f"Sorted by {metric or 'value'} ({'higher' if maximize else 'lower'} is better).", ""]
    if best:
        lines += [f"Optuna best value: {best['best_value']:.4f} with {best['best_params']}", ""]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")

    _plot(rows, swept, metric, sweep_dir / "summary.png")
    log.info(f"Sweep summary: {sweep_dir / 'summary.md'}\n" + "\n".join(lines[4:]))
    return rows


def _optuna_best(sweep_dir: Path) -> dict | None:
    path = sweep_dir / "optimization_results.yaml"
    if not path.exists():
        return None
    results = OmegaConf.to_container(OmegaConf.load(path))
    return results if "best_value" in results else None


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _plot(rows: list[dict], swept: list[str], metric: str | None, path: Path) -> None:
    """One panel per swept parameter: the optimized metric of every finished job against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["value"] is not None]
    params = swept or ["job"]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    for ax, param in zip(axes[0], params):
        xs = [r["params"].get(param, r["job"]) if param != "job" else r["job"] for r in done]
        numeric = all(_as_number(x) is not None for x in xs)
        categories = sorted(set(xs), key=lambda x: (_as_number(x) is None, _as_number(x) or 0, x))
        positions = [_as_number(x) if numeric else categories.index(x) for x in xs]
        ax.scatter(positions, [r["value"] for r in done], s=36, alpha=0.8, color="tab:blue")
        if numeric and len(set(positions)) > 1:
            means = {}
            for pos, r in zip(positions, done):
                means.setdefault(pos, []).append(r["value"])
            keys = sorted(means)
            ax.plot(keys, [sum(means[k]) / len(means[k]) for k in keys], color="tab:orange", label="mean")
            ax.legend(fontsize=8)
        if numeric:
            ax.set_xticks(sorted(set(positions)))
        else:
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(param)
        ax.set_ylabel(metric or "value")
        ax.grid(alpha=0.3)
    failed = len(rows) - len(done)
    fig.suptitle(f"{metric or 'value'} per job ({len(done)} finished" + (f", {failed} failed/skipped)" if failed else ")"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_failure(rows: list[dict], fail_fast: bool) -> str | None:
    """Why a finished sweep should exit with an error status, or None: no job finished, or
    ``fail_fast`` stopped it."""
    failed = [r for r in rows if r["status"] == "failed"]
    if fail_fast and failed:
        skipped = sum(r["status"] == "skipped" for r in rows)
        return (f"job {failed[0]['job']} failed and fail_fast=true stopped the sweep ({skipped} later "
                f"job{'' if skipped == 1 else 's'} skipped): {failed[0]['error']}")
    if not any(r["status"] == "ok" for r in rows):
        counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("failed", "skipped", "interrupted")
                           if any(r["status"] == s for r in rows))
        return f"no job of the sweep finished ({counts}); first error: {rows[0]['error']}"
    return None


class SweepSummary(Callback):
    """Hydra callback: summarize the sweep directory when a multirun ends, and end the
    command with exit status 1 (after writing the summary) when no job finished or
    ``fail_fast`` stopped the sweep, so that scripts and CI can tell."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(sweep_dir.glob(f"*/{RESULT_FILE}")):
            return
        failure = sweep_failure(summarize(sweep_dir), bool(config.get("fail_fast", False)))
        if failure is not None:
            print(f"Error: {failure}; see {sweep_dir / 'summary.md'}", file=sys.stderr, flush=True)
            sys.exit(1)
