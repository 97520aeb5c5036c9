"""What the benchmark measures with: timing two callables in turn, and the result rows.

Every number is a ratio against a reference measured in the same process. The two sides
are called in turn (rnnlab, reference, rnnlab, reference, ...) so that a change in machine
load hits both alike: each of ``reps`` repetitions, after ``warmup`` untimed ones (the
first calls fault in fresh memory pages and fill caches), gives one ratio of two calls
timed back to back, and a row reports the median of these ratios with their quartiles,
next to each side's median time. A timed sample repeats a fast call until it lasts at
least 20 ms.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

ROWS = ("forward", "backward", "stepwise", "memory", "lengths", "mixed", "generate", "e2e_classifier", "e2e_char",
        "scan")
CORE_ROWS = ROWS[:6]  # run for every shape and cell

# Ratios are rnnlab / reference: of times (lower is better), of memory, and of tokens/s
# for generate (higher is better). The default Elman cell's targets; the gated cells' are in
# CELL_TARGETS.
TARGETS = {"forward": ("<=", 0.8), "backward": ("<=", 0.8), "memory": ("<=", 1.2), "lengths": ("<=", 1.0),
           "generate": (">=", 1.0), "e2e_classifier": ("<=", 1.0), "e2e_char": ("<=", 1.0),
           "scan": ("<=", 0.2)}  # minGRU / minLSTM against rnnlab's GRU / LSTM
# The GRU's and LSTM's rows against torch.nn.GRU / LSTM: at least as fast.
CELL_TARGETS = {"forward": ("<=", 1.0), "backward": ("<=", 1.0), "lengths": ("<=", 1.0), "generate": (">=", 1.0)}

@dataclass
class Result:
    """One row of the table. ``rnnlab``/``reference``/``ratio`` are None for a skipped row."""

    row: str
    shape: str
    device: str
    rnnlab: float | None
    reference: float | None
    unit: str
    ratio: float | None
    ratio_q1: float | None  # 25th and 75th percentiles of the per-repetition ratios (timed rows)
    ratio_q3: float | None
    reference_name: str
    target: str
    meets_target: str  # "yes", "no", "-" (no target) or "skipped"
    note: str


def make_result(row: str, shape: str, device: torch.device, rnnlab: float | Sequence[float] | None,
                reference: float | Sequence[float] | None, unit: str, reference_name: str, note: str,
                targeted: bool = True, cell: str = "rnn_tanh") -> Result:
    """A row with its ratio and target (none if not ``targeted``); ``rnnlab=None`` makes a skipped row.

    ``rnnlab`` and ``reference`` are one value each, or the values of the interleaved
    repetitions (in the row's unit). Then each repetition gives a ratio rnnlab_i /
    reference_i of two measurements taken back to back, so a machine that speeds up or
    slows down during the run moves both; the row's ratio is their median and
    ``ratio_q1``/``ratio_q3`` their quartiles, and ``rnnlab``/``reference`` are each
    side's median.
    """
    targets = TARGETS if cell in ("rnn_tanh", "") else CELL_TARGETS if cell in ("gru", "lstm") else {}
    op, bound = targets.get(row, ("", None)) if targeted else ("", None)
    target = f"{op} {bound}" if op else ""
    if rnnlab is None:
        return Result(row, shape, str(device), None, None, unit, None, None, None, reference_name, target, "skipped",
                      note)
    if isinstance(rnnlab, (int, float)):
        ratio, q1, q3 = rnnlab / reference, None, None
    else:
        ratios = [a / b for a, b in zip(rnnlab, reference, strict=True)]
        ratio = statistics.median(ratios)
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (None, None, None)
        rnnlab, reference = statistics.median(rnnlab), statistics.median(reference)
    meets = "-" if not op else "yes" if (ratio <= bound if op == "<=" else ratio >= bound) else "no"
    return Result(row, shape, str(device), rnnlab, reference, unit, ratio, q1, q3, reference_name, target, meets, note)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Sequence[Callable[[], object]], reps: int, warmup: int,
                     device: torch.device, min_sample_s: float = 0.02) -> list[list[float]]:
    """Seconds per call of each function in each of ``reps`` rounds, after ``warmup``
    untimed rounds; a round times every function once, in order.

    A timed sample is ``number`` back-to-back calls, with ``number`` chosen after the
    warm-up so that the fastest function's sample lasts at least ``min_sample_s`` (as
    ``timeit`` does): sub-millisecond calls are otherwise at the mercy of timer and
    scheduler noise. Every function gets the same ``number``.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    number = 1
    if min_sample_s > 0:
        fastest = min(time_calls(fn, 1, device) for fn in fns)
        number = max(1, math.ceil(min_sample_s / max(fastest, 1e-9)))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, slot in zip(fns, times):
            slot.append(time_calls(fn, number, device) / number)
    return times


def time_calls(fn: Callable[[], object], number: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync(device)
    return time.perf_counter() - start




def ms(seconds: Sequence[float]) -> list[float]:
    return [1e3 * t for t in seconds]



def load_average() -> str:
    """The 1-minute load average: other busy processes make every time here slower and noisier."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
