"""Sweep summaries: ``summary.csv``, ``summary.md`` and ``summary.png`` for a sweep directory,
from the ``result.json`` each job wrote (:func:`rnnlab.train.run`).

Jobs that differ only in ``seed`` or ``data.fold`` (:data:`REPLICATE_KEYS`) are replicates
of one configuration: the summary then also gives, per configuration, the mean, sample
standard deviation and count of each metric over its finished replicates, best mean first,
and the figure draws them as error bars.

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
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import target_class
from .run_checks import RESULT_FILE

log = logging.getLogger(__name__)

# Overrides whose jobs are replicates of one configuration: seeds, cross-validation folds.
REPLICATE_KEYS = ("seed", "data.fold")


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
    for path in sorted(sweep_dir.glob(f"*/{RESULT_FILE}"), key=lambda p: _job_order(p.parent.name)):
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


def configurations(rows: list[dict], swept: list[str], maximize: bool) -> list[dict]:
    """One entry per configuration (the swept values other than :data:`REPLICATE_KEYS`) when
    some configuration has more than one job, else []: its ``params``, ``jobs``, ``runs``
    (jobs), and for the optimized metric (``value``) and every other metric the ``mean``,
    sample standard deviation ``std`` (None under two values) and count ``n`` over its
    finished jobs. Best mean first; configurations with no finished job last."""
    keys = [p for p in swept if p not in REPLICATE_KEYS]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row["params"].get(k, "") for k in keys), []).append(row)
    if all(len(members) == 1 for members in groups.values()):
        return []
    names = sorted({k for r in rows for k in r["metrics"] if k.startswith(("val/", "test/"))})
    configs = []
    for values, members in groups.items():
        done = [m for m in members if m["status"] == "ok" and m["value"] is not None]
        stats = {"value": _stats([m["value"] for m in done])}
        for name in names:
            stats[name] = _stats([m["metrics"][name] for m in done if name in m["metrics"]])
        configs.append({"params": dict(zip(keys, values)), "jobs": sorted((m["job"] for m in members), key=_job_order),
                        "runs": len(members), **stats})
    def best_first(config: dict) -> tuple:
        mean = config["value"]["mean"]
        return (mean is None, 0.0 if mean is None else -mean if maximize else mean)

    configs.sort(key=best_first)
    return configs


def _job_order(job: str) -> tuple:
    return len(job), job


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


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

    configs = configurations(rows, swept, maximize)
    others = [m for m in metric_names if m != metric]
    if configs:  # one more row per configuration, after the jobs' rows, and two more columns
        header += [f"{metric or 'value'} std", "replicates"]
        table = [[*line, "", ""] for line in table]
        for c in configs:
            table.append([f"mean of {' '.join(c['jobs'])}",
                          *[c["params"].get(p, "(replicates)") for p in swept],
                          f"{c['value']['n']} of {c['runs']} ok", _blank(c["value"]["mean"]),
                          *[_blank(c[m]["mean"]) for m in others], "", "",
                          _blank(c["value"]["std"]), c["value"]["n"]])

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
    if configs:
        keys = [p for p in swept if p not in REPLICATE_KEYS]
        replicated = [k for k in REPLICATE_KEYS if k in swept]
        lines += [f"## Configurations: mean ± sample standard deviation over replicates ({', '.join(replicated)})",
                  "", "| " + " | ".join([*keys, "n", metric or "value", *others, "jobs"]) + " |",
                  "|" + "---|" * (len(keys) + 3 + len(others))]
        for c in configs:
            cells = [*[c["params"][k] for k in keys], f"{c['value']['n']} of {c['runs']}",
                     _plus_minus(c["value"]), *[_plus_minus(c[m]) for m in others], " ".join(c["jobs"])]
            lines.append("| " + " | ".join(fmt(v) for v in cells) + " |")
        lines += ["", "## Jobs", ""]
        job_header, job_table = header[:-2], [line[:-2] for line in table[:len(rows)]]
    else:
        job_header, job_table = header, table
    lines += ["| " + " | ".join(job_header) + " |", "|" + "---|" * len(job_header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in job_table]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")

    _plot(rows, swept, metric, sweep_dir / "summary.png", configs)
    log.info(f"Sweep summary: {sweep_dir / 'summary.md'}\n" + "\n".join(lines[4:]))
    return rows


def _blank(value):
    return "" if value is None else value


def _plus_minus(stats: dict) -> str:
    if stats["mean"] is None:
        return ""
    return f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")


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


def _plot(rows: list[dict], swept: list[str], metric: str | None, path: Path, configs: list[dict]) -> None:
    """One panel per swept parameter: the optimized metric of every finished job against it,
    and, where jobs are replicates (:data:`REPLICATE_KEYS`), each configuration's mean with
    its standard deviation as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["value"] is not None]
    params = [p for p in swept if not configs or p not in REPLICATE_KEYS] or ["job"]
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
        with_mean = [c for c in configs if c["value"]["mean"] is not None]
        if with_mean and param != "job":
            xs_c = [c["params"][param] for c in with_mean]
            pos_c = [_as_number(x) if numeric else categories.index(x) for x in xs_c]
            ax.errorbar(pos_c, [c["value"]["mean"] for c in with_mean], yerr=[c["value"]["std"] or 0 for c in with_mean],
                        fmt="D", color="tab:red", capsize=4, markersize=5, label="configuration mean ± sd")
            ax.legend(fontsize=8)
        elif with_mean:  # replicates of a single configuration: its mean and a band of one sd
            mean, std = with_mean[0]["value"]["mean"], with_mean[0]["value"]["std"] or 0
            ax.axhline(mean, color="tab:red", label="mean ± sd")
            ax.axhspan(mean - std, mean + std, color="tab:red", alpha=0.15)
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
