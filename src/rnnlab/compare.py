"""Cells and regularisers compared at equal budget: every configuration trains on the same
data for the same wall-clock time (Lightning's ``trainer.max_time``) with about the same
number of parameters (its hidden size chosen to match the reference configuration's count),
and the table reports the best validation value reached, the optimiser steps done and the
wall time. ``scripts/compare_cells.py`` wraps :func:`run`; ``conf/compare.yaml`` holds the
settings and the configurations.

For tinyshakespeare the best checkpoint of every configuration is also evaluated on the
validation text both ways a character model can read it, whichever way it trained
(:func:`text_bpc`): independent windows from a zero state, and contiguous streams that carry
the state through the whole text.

For the seed task it also draws the gradient flow (∂loss/∂h_t over 60 steps) of every
trained classifier in one figure (:func:`rnnlab.analyze.gradient_flow_figure`).

A comparison of many configurations runs for hours, so the table is rewritten after every
configuration, and each finished configuration leaves its row in its run directory
(``<out>/<name>/compare_row.json``, with the exact overrides it trained with and the parameter
target). After a crash, the same command with ``resume=true`` reads those rows back instead of
training them again, and trains the rest; a row whose settings differ is trained again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from . import checks
from .benchmark.e2e import compose_train_config
from .benchmark.report import write_csv
from .errors import ConfigError
from .train import fill_model_from_data, train

log = logging.getLogger(__name__)

# What each task trains: the overrides of conf/train.yaml, the metric compared and its direction.
TASKS = {
    "seed": {"overrides": ["model=classifier"], "metric": "val/acc", "mode": "max"},
    "shakespeare": {"overrides": ["model=char_rnn"], "metric": "val/bpc", "mode": "min"},
}
COLUMNS = ["config", "cell", "overrides", "hidden_size", "parameters", "metric", "best", "windows", "carried", "steps",
           "wall_s", "seconds"]


@dataclass
class Row:
    config: str
    cell: str
    overrides: str
    hidden_size: int
    parameters: int
    metric: str
    best: float | None
    windows: float | None  # shakespeare: the best checkpoint's val/bpc on windows from a zero state
    carried: float | None  # ... and with the state carried through the validation text
    steps: int
    wall_s: float
    seconds: int  # the budget


def parameter_count(cfg: DictConfig) -> int:
    net = instantiate(cfg.model.net)
    return sum(p.numel() for p in net.parameters())


def match_parameters(cfg: DictConfig, target: int, max_hidden: int = 4096) -> tuple[int, int]:
    """Set ``model.net.hidden_size`` (and ``embed_dim`` too where the weights are tied) to the
    size whose parameter count is closest to ``target``; return (hidden size, count)."""
    def count(size: int) -> int:
        with open_dict(cfg):
            cfg.model.net.hidden_size = size
            if cfg.model.net.get("tie_weights"):
                cfg.model.net.embed_dim = size
        return parameter_count(cfg)

    low, high = 1, max_hidden
    while low < high:  # the smallest size with at least ``target`` parameters
        mid = (low + high) // 2
        if count(mid) < target:
            low = mid + 1
        else:
            high = mid
    best = min({max(low - 1, 1), low}, key=lambda size: (abs(count(size) - target), size))
    return best, count(best)


def _sized_config(conf_dir: Path, overrides: Sequence[str], out: Path) -> DictConfig:
    cfg = compose_train_config(conf_dir, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    fill_model_from_data(cfg.model, datamodule)
    return cfg


def run(*, task: str, configs: Mapping[str, Sequence[str]], reference: str, seconds: int, out: str | Path,
        conf_dir: str | Path, overrides: Sequence[str] = (), gradient_flow: bool = True,
        only: Sequence[str] | None = None, resume: bool = False) -> list[Row]:
    """Train every configuration for ``seconds`` of wall time at the reference's parameter
    count; write compare.csv, compare.md (and gradient_flow.png for the seed task) to ``out``.

    Args:
        task: a key of :data:`TASKS`.
        configs: name -> Hydra overrides of that configuration (``model.net.cell=lstm`` and
            any regularisers); run in this order.
        reference: the configuration whose parameter count, at its configured size, every
            other configuration matches.
        seconds: wall-clock training budget of each configuration (``trainer.max_time``).
        out, conf_dir: the output directory; the directory holding train.yaml.
        overrides: applied to every configuration first (the data, the batch size, ...).
        only: the names of the configurations to train (None: all); the reference need not be
            among them, its parameter count is the target all the same.
        gradient_flow: for the seed task, draw every trained classifier's gradient flow.
        resume: read back the row of every configuration that a previous run into ``out``
            finished with the same overrides, budget and parameter target, instead of
            training it again.
    """
    if task not in TASKS:
        raise ConfigError("task", f"expected one of {sorted(TASKS)}, got {task!r}")
    if reference not in configs:
        raise ConfigError("reference", f"expected one of the configs {list(configs)}, got {reference!r}")
    unknown = [name for name in (only or []) if name not in configs]
    if unknown:
        raise ConfigError("only", f"expected names among the configs {list(configs)}, got {unknown}")
    seconds = checks.int_at_least("seconds", seconds, 1)
    out, conf_dir = Path(out), Path(conf_dir).resolve()
    spec = TASKS[task]
    base = [*spec["overrides"], *overrides, "trainer.max_epochs=-1", f"+trainer.max_time={_duration(seconds)}"]
    target = parameter_count(_sized_config(conf_dir, [*base, *configs[reference]], out / "reference"))
    rows, recordings = [], []
    trained = {name: extra for name, extra in configs.items() if only is None or name in only}
    for name, extra in trained.items():
        settings = {"overrides": [*base, *extra], "seconds": seconds, "target": target}
        row = _finished_row(out / name, settings) if resume else None
        if row is None:
            row = _train_row(name, extra, settings, conf_dir, out, spec)
        else:
            log.info(f"{name}: read back from {out / name / ROW_FILE} (resume=true)")
        rows = _sorted([*rows, row], spec["mode"])
        write(rows, out, task, target)  # the table so far survives a crash
        if task == "seed" and gradient_flow:
            recordings.append(_recording(out / name / "checkpoints" / "last.ckpt"))
    if recordings:
        from .analyze import gradient_flow_figure

        fig = gradient_flow_figure(recordings, [f"{name} (top layer)" for name in trained], name_layers=False)
        fig.savefig(out / "gradient_flow.png", dpi=110)
    return rows


ROW_FILE = "compare_row.json"


def _train_row(name: str, extra: Sequence[str], settings: dict, conf_dir: Path, out: Path, spec: dict) -> Row:
    """Train one configuration at the parameter target and write its row beside its run."""
    (out / name / ROW_FILE).unlink(missing_ok=True)  # a row left by an earlier run no longer describes this one
    cfg = _sized_config(conf_dir, settings["overrides"], out / name)
    size, params = match_parameters(cfg, settings["target"])
    log.info(f"{name}: hidden_size {size}, {params:,} parameters (target {settings['target']:,}), "
             f"{settings['seconds']} s")
    start = time.perf_counter()
    metrics, _ = train(cfg)
    wall = time.perf_counter() - start
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    steps = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    best = metrics.get(f"{spec['metric']}_best")
    windows = carried = None
    if spec["metric"] == "val/bpc":
        best_ckpt = best_checkpoint(ckpt, spec["metric"])
        windows, carried = text_bpc(best_ckpt, stateful=False), text_bpc(best_ckpt, stateful=True)
    row = Row(name, cfg.model.net.cell, " ".join(extra), size, params, spec["metric"],
              None if best is None else float(best), windows, carried, steps, round(wall, 1), settings["seconds"])
    (out / name / ROW_FILE).write_text(json.dumps({"settings": settings, "row": asdict(row)}, indent=2) + "\n")
    return row


def _finished_row(run_dir: Path, settings: dict) -> Row | None:
    """The row a previous run left in ``run_dir`` if it trained with exactly ``settings``."""
    path = run_dir / ROW_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("settings") != settings:
        log.info(f"{run_dir.name}: {path} was trained with other settings; training it again")
        return None
    return Row(**record["row"])


def _sorted(rows: list[Row], mode: str) -> list[Row]:
    """Best first; rows without a value last."""
    reverse = mode == "max"
    return sorted(rows, key=lambda r: (r.best is None, -r.best if reverse and r.best is not None else r.best or 0.0))


def _duration(seconds: int) -> str:
    """Lightning's max_time string, DD:HH:MM:SS."""
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    return f"00:{hours:02d}:{m:02d}:{s:02d}"


def best_checkpoint(last: Path, metric: str) -> Path:
    """The best checkpoint by ``metric`` that the run whose newest checkpoint is ``last``
    saved (its ModelCheckpoint's record); ``last`` where none monitored ``metric`` or that file
    is gone."""
    state = torch.load(last, map_location="cpu", weights_only=True)
    for value in state.get("callbacks", {}).values():
        if (isinstance(value, dict) and value.get("monitor") == metric and value.get("best_model_path")
                and Path(value["best_model_path"]).is_file()):
            return Path(value["best_model_path"])
    return last


def text_bpc(ckpt: str | Path, stateful: bool, stage: str = "validate") -> float:
    """Bits per character of the character model in ``ckpt`` on its validation text (or test
    text, ``stage="test"``), read as independent windows of ``seq_len`` from a zero state
    (``stateful=False``) or as ``batch_size`` contiguous streams, the state carried from
    window to window through the whole text (``stateful=True``); evaluated on the CPU."""
    import lightning as L

    from .eval import load_for_evaluation

    task, datamodule = load_for_evaluation(str(ckpt), {"stateful": stateful}, stage=stage)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    run_stage = trainer.validate if stage == "validate" else trainer.test
    prefix = "val" if stage == "validate" else "test"
    return float(run_stage(task, datamodule=datamodule, verbose=False)[0][f"{prefix}/bpc"])


def _recording(ckpt: Path):
    """The top layer's gradient flow of a trained classifier on 64 validation sequences of 60
    steps, the loss reading only the final state."""
    from .analyze import Recording, first_batch, record
    from .checkpoints import load_task

    task, data_config = load_task(ckpt)
    data = OmegaConf.to_container(OmegaConf.create(data_config), resolve=True)
    data = {**data, "seq_len": 60, "min_len": None, "num_val": 64}
    rec = record(task, first_batch(data, 64, task=task))[0]
    return Recording(rec.name, rec.states[-1:], rec.grad_norms[-1:])  # the top layer: (1, B, T, H), (1, T)


def write(rows: list[Row], out: Path, task: str, target: int) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "compare.csv", out / "compare.md"
    write_csv(csv_path, COLUMNS, rows)
    metric = rows[0].metric if rows else ""
    text = task == "shakespeare"
    lines = [f"Task {task}: {rows[0].seconds if rows else 0} s of training per configuration, about {target:,} "
             f"parameters each; best {metric} on validation, best first."
             + (" The best checkpoint's val/bpc on windows from a zero state, and with the state carried "
                "through the validation text." if text else ""), "",
             f"| config | cell | hidden | parameters | best {metric} |" + (" windows | carried |" if text else "")
             + " steps | wall s |",
             "| --- | --- | --- | --- | --- |" + (" --- | --- |" if text else "") + " --- | --- |"]

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for r in rows:
        extra = f" {number(r.windows)} | {number(r.carried)} |" if text else ""
        lines.append(f"| {r.config} | {r.cell} | {r.hidden_size} | {r.parameters:,} | {number(r.best)} |{extra} "
                     f"{r.steps} | {r.wall_s} |")
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return csv_path, md_path
