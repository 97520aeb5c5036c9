"""The benchmark's one entry point, :func:`run`; ``scripts/benchmark.py`` calls it with
``conf/benchmark.yaml``, which holds every setting and its default."""

from __future__ import annotations

import contextlib

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from .. import checks
from ..models.kernels.matmul import packed_matmul
from .core import SHAPES, TORCH_MODULES, Shape, core_rows, scan_rows
from .e2e import e2e_char_row, e2e_classifier_row, generate_row
from .report import markdown_table, notes, ratio_text, write_results
from .timing import CORE_ROWS, ROWS, Result, load_average


def _names(name: str, value: str | Sequence, known: Sequence[str]) -> list:
    items = value.split(",") if isinstance(value, str) else list(value)
    unknown = [item for item in items if not isinstance(item, str) or item not in known]
    if unknown or not items:
        raise ValueError(f"{name}: expected a non-empty list of {', '.join(known)}, got {items!r}")
    return items


def _shape(value) -> Shape:
    """A shape: a name of :data:`SHAPES`, a :class:`Shape`, or a mapping of its fields
    (``{name: tiny, B: 4, T: 5, D: 3, H: 8, L: 2}`` on the command line)."""
    if isinstance(value, Shape):
        return value
    if isinstance(value, str) and value in SHAPES:
        return SHAPES[value]
    try:
        return Shape(**value)
    except TypeError:
        raise ValueError(f"shapes: expected names of {', '.join(SHAPES)} or mappings of name, B, T, D, H and L, "
                         f"got {value!r}") from None


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def run(*, shapes: str | Sequence, rows: str | Sequence[str], cells: str | Sequence[str], packed: bool, reps: int,
        warmup: int, threads: int, device: str, out: str | Path, shakespeare: str | None, conf_dir: str | Path,
        max_new_tokens: int, char_windows: int, classifier_overrides: Sequence[str],
        char_overrides: Sequence[str]) -> list[Result]:
    """Run the selected rows, print the table, write benchmark.csv and benchmark.md to ``out``.

    Every argument is a key of ``conf/benchmark.yaml``, which documents it and holds its
    default; tests compose that config with their overrides.

    Args:
        shapes: names from :data:`SHAPES`, :class:`Shape` objects or mappings of their fields;
            used by the forward, backward, stepwise and memory rows.
        rows: names from :data:`ROWS` (a list, or comma-separated).
        cells: cells of the core rows, from :data:`TORCH_MODULES`, each against its
            torch.nn module; the targets apply to ``rnn_tanh``, and the stepwise row is run
            for it only.
        packed: let rnnlab use oneDNN's packed weights (:mod:`rnnlab.models.kernels.matmul`);
            ``False`` measures rnnlab with ``torch.addmm`` only, as on a build without oneDNN.
        reps, warmup: timed repetitions per measurement, and untimed ones before them.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).
        device: "cpu" or "cuda".
        out: directory of benchmark.csv and benchmark.md.
        shakespeare: path to tinyshakespeare.txt for e2e_char; None or a missing file skips the row.
        conf_dir: the directory holding train.yaml, for the e2e rows.
        max_new_tokens: tokens sampled per generate call.
        char_windows: training windows in the e2e_char epoch (data.windows_per_epoch).
        classifier_overrides, char_overrides: extra Hydra overrides of the e2e runs (e.g. tiny
            data for tests); the bare loop reads the same composed config, so both sides follow them.

    Returns:
        The rows of the table.
    """
    shapes = [_shape(s) for s in (shapes.split(",") if isinstance(shapes, str) else shapes)]
    if not shapes:
        raise ValueError(f"shapes: expected a non-empty list of {', '.join(SHAPES)} or shapes, got []")
    rows = _names("rows", rows, ROWS)
    cells = _names("cells", cells, list(TORCH_MODULES))
    reps, warmup = checks.int_at_least("reps", reps, 1), checks.int_at_least("warmup", warmup, 0)
    threads = checks.int_at_least("threads", threads, 1)
    max_new_tokens = checks.int_at_least("max_new_tokens", max_new_tokens, 1)
    char_windows = checks.int_at_least("char_windows", char_windows, 1)
    dev = _device(device)

    old_threads, old_tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    # compose() for the e2e rows replaces the HydraConfig of a caller under @hydra.main.
    old_hydra = HydraConfig.instance().cfg
    load_before = load_average()
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = False
    results: list[Result] = []

    def add(result: Result) -> None:
        results.append(result)
        ratio = "skipped" if result.ratio is None else f"ratio {ratio_text(result)}"
        print(f"  {result.row:<15} {result.shape:<45} {ratio}", flush=True)

    try:
        with packed_matmul(False) if not packed else contextlib.nullcontext():  # on: where timed faster
            for cell in cells if set(rows) & set(CORE_ROWS) else []:
                for shape in shapes:
                    for result in core_rows(shape, rows, reps, warmup, dev, cell):
                        add(result)
            for shape in shapes if "scan" in rows else []:
                for result in scan_rows(shape, reps, warmup, dev):
                    add(result)
            for cell in cells if "generate" in rows else []:
                add(generate_row(max_new_tokens, reps, warmup, dev, cell))
            if "e2e_classifier" in rows:
                add(e2e_classifier_row(conf_dir, classifier_overrides, reps, warmup, dev))
            if "e2e_char" in rows:
                add(e2e_char_row(conf_dir, shakespeare, char_windows, char_overrides, reps, warmup, dev))
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.allow_tf32 = old_tf32
        HydraConfig.instance().cfg = old_hydra

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    header = (f"{datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, {name}, {threads} threads, float32, "
              f"{'oneDNN packed weights where timed faster' if packed else 'packed weights off (torch.addmm only)'}, "
              f"median of {reps} interleaved repetitions after {warmup} warm-up, load average {load_before} before "
              f"and {load_average()} after (on {os.cpu_count()} cores). Ratios are rnnlab / reference "
              "(times and memory: lower is better; generate, tokens/s: higher is better): the median of the "
              "repetitions' ratios, and in brackets their 25th to 75th percentile; the rnnlab and reference "
              "columns are each side's median.")
    csv_path, md_path = write_results(results, Path(out), header)
    print(f"\n{header}\n\n{markdown_table(results)}\n\n{notes(results)}\n\nWrote {csv_path} and {md_path}")
    return results
