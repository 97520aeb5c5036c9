"""Sweep summaries: ``summary.csv``, ``summary.md`` and ``summary.png`` for a sweep directory,
from the ``result.json`` each job wrote (:func:`rnnlab.train.run`).

When a multirun ends, Hydra calls :class:`SweepSummary` (registered in
``conf/hydra/default.yaml``), which writes the summary into the sweep directory and ends
the command with exit status 1 when no job finished or ``fail_fast`` stopped the sweep.
``scripts/summarize.py <sweep_dir>`` writes it again for any sweep directory afterwards.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import target_class
from .run_checks import RESULT_FILE

log = logging.getLogger(__name__)


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
    """Finished jobs first, best first; then failed or interrupted, then skipped. Python's
    sort is stable, so ties keep the job order of :func:`load_results`."""
    status_rank = {"ok": 0, "failed": 1, "interrupted": 1, "skipped": 2}[row["status"]]
    value = row["value"]
    if value is None:
        return (status_rank, math.inf)
    return (status_rank, -value if maximize else value)


def _maximize(sweep_dir: Path, rows: list[dict]) -> bool:
    """Whether the optimized metric is better higher: the ``mode`` each job recorded (its
    task's ``monitor_mode``, or the run's ``optimized_mode``); for jobs written before that
    was recorded, the ``monitor_mode`` of the task in the first job's config."""
    mode = next((r.get("mode") for r in rows if r.get("mode")), None)
    if mode is None:
        config = next((sweep_dir / r["job"] / ".hydra" / "config.yaml" for r in rows
                       if (sweep_dir / r["job"] / ".hydra" / "config.yaml").is_file()), None)
        target = OmegaConf.select(OmegaConf.load(config), "model._target_") if config is not None else None
        mode = getattr(target_class({"_target_": target}, "model"), "monitor_mode", None) if target else None
    return mode != "min"


def summarize(sweep_dir: str | Path) -> list[dict]:
    """Write summary.csv, summary.md and summary.png for a sweep; return the sorted rows."""
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    if not rows:
        raise ValueError(f"expected a sweep directory (one sub-directory with {RESULT_FILE} per job), "
                         f"got {str(sweep_dir)!r}, which has none")
    metric = next((r["optimized_metric"] for r in rows if r["optimized_metric"]), None)
    maximize = _maximize(sweep_dir, rows)
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
