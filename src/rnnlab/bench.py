"""Benchmarks: rnnlab's RNN, generation and training pipeline against plain PyTorch.

    python -m rnnlab.bench --shapes seed,char --reps 10 --shakespeare ../shared/data/tinyshakespeare.txt

Every number is a ratio against a reference measured in the same process. The two sides
are called in turn (rnnlab, reference, rnnlab, reference, ...) so that a change in machine
load hits both alike: each of ``reps`` repetitions, after ``warmup`` untimed ones (the
first calls fault in fresh memory pages and fill caches), gives one ratio of two calls
timed back to back, and a row reports the median of these ratios with their quartiles,
next to each side's median time. A timed sample repeats a fast call until it lasts at
least 20 ms.
Threads are fixed with ``torch.set_num_threads``, tensors are float32, and on CUDA every
timed call is bracketed by ``torch.cuda.synchronize`` (cuDNN's TF32 is switched off for
the run, so torch.nn.RNN computes in float32 like rnnlab). Run it on an otherwise idle
machine: when other processes keep the cores busy, each of the thousands of small
per-step matrix products waits for descheduled threads, and times grow many-fold (the
header records the load average before and after).

Rows, for each shape (B, T, D, H, L) of :data:`SHAPES` and each cell (the default Elman
tanh cell against ``torch.nn.RNN``; GRU and LSTM against ``torch.nn.GRU`` and
``torch.nn.LSTM``), batch_first, with the same weights (``RNN.from_torch``):

- ``forward``: forward pass under ``torch.no_grad``.
- ``backward``: forward + backward: gradients of ``outputs.sum() + h_n.sum()`` with respect
  to the input and every weight.
- ``stepwise``: the same forward + backward, rnnlab's layer-major ``RNN.forward`` against
  the seed's step-by-step loop ``RNN.forward_stepwise`` (the reference here is rnnlab's
  own readable loop, not torch); default cell only.
- ``memory``: memory a forward + backward needs beyond the weights and the input (see
  :func:`saved_bytes` and :func:`cuda_peak_bytes`); deterministic, so measured once.

And three end-to-end rows, independent of the shapes:

- ``generate``: ``CharRNN.generate`` tokens/s against the same sampling loop written with
  ``nn.Embedding``, ``nn.RNN`` and ``nn.Linear`` holding the same weights.
- ``e2e_classifier`` / ``e2e_char``: one training epoch through ``rnnlab.train.train``
  (the code path of ``scripts/train.py``) against a bare PyTorch loop with a
  ``torch.nn.RNN`` model of the same size on the same data; :func:`e2e_note` lists what
  each side does.

Targets (:data:`TARGETS`) are shown with each ratio; the benchmark reports whether they
are met and never fails because of them. The table goes to stdout and to
``benchmark.csv`` and ``benchmark.md`` under ``out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .models import RNN, CharRNN
from .models._matmul import packed_matmul
from .train import train


@dataclass(frozen=True)
class Shape:
    """Sizes of one core benchmark: batch B, time T, input features D, hidden H, layers L."""

    name: str
    B: int
    T: int
    D: int
    H: int
    L: int

    def __str__(self) -> str:
        return f"{self.name} B{self.B} T{self.T} D{self.D} H{self.H} L{self.L}"


SHAPES = {
    "seed": Shape("seed", B=64, T=20, D=10, H=64, L=2),  # the seed classifier's batch
    "char": Shape("char", B=64, T=128, D=64, H=256, L=3),  # the char LM's training batch
    "large": Shape("large", B=32, T=256, D=64, H=512, L=3),
}
ROWS = ("forward", "backward", "stepwise", "memory", "generate", "e2e_classifier", "e2e_char")
CORE_ROWS = ROWS[:4]  # run for every shape

# Ratios are rnnlab / reference: of times (lower is better), of memory, and of tokens/s
# for generate (higher is better).
TARGETS = {"forward": ("<=", 0.8), "backward": ("<=", 0.8), "memory": ("<=", 1.2),
           "generate": (">=", 1.0), "e2e_classifier": ("<=", 1.0), "e2e_char": ("<=", 1.0)}

# The generation model: conf/model/char_rnn.yaml's sizes with tinyshakespeare's 65 characters.
GEN_VOCAB, GEN_EMBED, GEN_HIDDEN, GEN_LAYERS, GEN_DROPOUT = 65, 64, 256, 3, 0.1
GEN_PROMPT_LEN, GEN_TEMPERATURE = 16, 0.8


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
                targeted: bool = True) -> Result:
    """A row with its ratio and target (none if not ``targeted``); ``rnnlab=None`` makes a skipped row.

    ``rnnlab`` and ``reference`` are one value each, or the values of the interleaved
    repetitions (in the row's unit). Then each repetition gives a ratio rnnlab_i /
    reference_i of two measurements taken back to back, so a machine that speeds up or
    slows down during the run moves both; the row's ratio is their median and
    ``ratio_q1``/``ratio_q3`` their quartiles, and ``rnnlab``/``reference`` are each
    side's median.
    """
    op, bound = TARGETS.get(row, ("", None)) if targeted else ("", None)
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


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
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
        fastest = min(_time_calls(fn, 1, device) for fn in fns)
        number = max(1, math.ceil(min_sample_s / max(fastest, 1e-9)))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, slot in zip(fns, times):
            slot.append(_time_calls(fn, number, device) / number)
    return times


def _time_calls(fn: Callable[[], object], number: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------ core RNN benchmarks
# The torch.nn module each cell is compared with (batch_first; the Elman cell with tanh).
TORCH_MODULES = {"rnn_tanh": ("torch.nn.RNN", nn.RNN), "gru": ("torch.nn.GRU", nn.GRU),
                 "lstm": ("torch.nn.LSTM", nn.LSTM)}
TARGETED_CELL = "rnn_tanh"  # the targets are set for the default RNN; other cells' rows show no target


def core_pair(shape: Shape, device: torch.device, cell: str = TARGETED_CELL) -> tuple[RNN, nn.RNNBase, torch.Tensor]:
    """An rnnlab RNN with the weights of a fresh torch.nn module of ``shape`` and ``cell``, and x (B, T, D)."""
    torch.manual_seed(0)
    reference = TORCH_MODULES[cell][1](shape.D, shape.H, shape.L, batch_first=True).to(device)
    ours = RNN.from_torch(reference)
    x = torch.randn(shape.B, shape.T, shape.D, device=device)  # (B, T, D)
    return ours, reference, x


def _flat_state(h_n) -> tuple[torch.Tensor, ...]:
    return tuple(h_n) if isinstance(h_n, tuple) else (h_n,)  # (h_n,) or (h_n, c_n)


def forward_only(forward: Callable, x: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.no_grad():
            forward(x)
    return run


def forward_backward(forward: Callable, module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Gradients of outputs.sum() + h_n.sum() (+ c_n.sum()) with respect to x and every weight.

    ``torch.autograd.grad`` returns the gradients instead of accumulating them into
    ``.grad``, so no call pays for zeroing or adding to the previous call's gradients.
    """
    x = x.detach().requires_grad_()
    inputs = [x, *module.parameters()]

    def run():
        outputs, h_n = forward(x)  # (B, T, H), (L, B, H) [or (h_n, c_n)]
        torch.autograd.grad(outputs.sum() + sum(s.sum() for s in _flat_state(h_n)), inputs)
    return run


def saved_bytes(forward: Callable, module: nn.Module, x: torch.Tensor) -> int:
    """CPU memory a forward + backward needs: the distinct storages autograd saves for
    backward while ``forward(x)`` runs, plus those of its outputs.

    The weights' and the input's storages are left out: they exist before and after the
    pass (as on CUDA, where the peak is measured above what is already allocated).
    Storages are counted once however many saved tensors view them.
    """
    x = x.detach().requires_grad_()
    known = {t.untyped_storage().data_ptr() for t in (x, *module.parameters())}
    sizes: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        outputs, h_n = forward(x)  # (B, T, H), (L, B, H) [or (h_n, c_n)]
    for t in (outputs, *_flat_state(h_n)):
        count(t)
    return sum(n for ptr, n in sizes.items() if ptr not in known)


def cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Peak CUDA memory allocated by ``run()`` above what was allocated before it."""
    run()  # cuBLAS and cuDNN allocate their workspaces once, on the first call
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _ms(seconds: Sequence[float]) -> list[float]:
    return [1e3 * t for t in seconds]


def core_rows(shape: Shape, rows: Sequence[str], reps: int, warmup: int, device: torch.device,
              cell: str = TARGETED_CELL) -> list[Result]:
    """The forward, backward, stepwise and memory rows selected in ``rows`` for one shape and
    cell (stepwise only for the default cell)."""
    ours, reference, x = core_pair(shape, device, cell)
    torch_name = TORCH_MODULES[cell][0]
    label = str(shape) if cell == TARGETED_CELL else f"{shape} {cell}"
    targeted = cell == TARGETED_CELL
    results = []
    if "forward" in rows:
        t_ours, t_ref = time_interleaved([forward_only(ours, x), forward_only(reference, x)], reps, warmup, device)
        results.append(make_result("forward", label, device, _ms(t_ours), _ms(t_ref), "ms", torch_name,
                                   "forward under torch.no_grad", targeted))
    if "backward" in rows:
        t_ours, t_ref = time_interleaved([forward_backward(ours, ours, x), forward_backward(reference, reference, x)],
                                         reps, warmup, device)
        results.append(make_result("backward", label, device, _ms(t_ours), _ms(t_ref), "ms", torch_name,
                                   "forward + backward (gradients for the input and every weight)", targeted))
    if "stepwise" in rows and targeted:
        t_ours, t_step = time_interleaved([forward_backward(ours, ours, x),
                                           forward_backward(ours.forward_stepwise, ours, x)], reps, warmup, device)
        results.append(make_result("stepwise", label, device, _ms(t_ours), _ms(t_step), "ms",
                                   "rnnlab RNN.forward_stepwise",
                                   "forward + backward; rnnlab's layer-major RNN.forward against the seed's "
                                   "step-by-step loop (both rnnlab; no target)"))
    if "memory" in rows:
        results.append(memory_row(label, ours, reference, x, device, torch_name, targeted))
    return results


def memory_row(label: str, ours: RNN, reference: nn.RNNBase, x: torch.Tensor, device: torch.device,
               torch_name: str = "torch.nn.RNN", targeted: bool = True) -> Result:
    if device.type == "cuda":
        ours_bytes = cuda_peak_bytes(forward_backward(ours, ours, x), device)
        ref_bytes = cuda_peak_bytes(forward_backward(reference, reference, x), device)
        note = "peak torch.cuda.max_memory_allocated over forward + backward, above the memory allocated before"
    else:
        ours_bytes = saved_bytes(ours, ours, x)
        ref_bytes = saved_bytes(reference, reference, x)
        note = ("bytes autograd saves for backward (distinct storages, weights and input left out) "
                "plus outputs and h_n")
    return make_result("memory", label, device, ours_bytes / 2**20, ref_bytes / 2**20, "MiB", torch_name, note,
                       targeted)


# ----------------------------------------------------------------------- generation
class TorchCharLM(nn.Module):
    """rnnlab's CharRNN written with torch.nn: Embedding, RNN (tanh), Dropout, Linear.

    Inputs: idx (B, T) int64; h0 (L, B, H) or None. Outputs: logits (B, T, V); h_n (L, B, H).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.RNN(embed_dim, hidden_size, num_layers, nonlinearity="tanh", batch_first=True,
                          dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)

    @classmethod
    def from_rnnlab(cls, lm: CharRNN) -> "TorchCharLM":
        """A copy of ``lm``'s weights; the RNN comes from ``lm.rnn.to_torch()``."""
        rnn = lm.rnn
        model = cls(lm.vocab_size, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.dropout_p)
        model.embedding.load_state_dict(lm.embedding.state_dict())
        model.rnn = rnn.to_torch()
        model.fc.load_state_dict(lm.fc.state_dict())
        return model.to(lm.fc.weight.device)

    def forward(self, idx: torch.Tensor, h0: torch.Tensor | None = None):
        outputs, h_n = self.rnn(self.embedding(idx), h0)  # (B, T, H), (L, B, H)
        return self.fc(self.dropout(outputs)), h_n  # (B, T, V)


@torch.no_grad()
def torch_generate(model: TorchCharLM, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
                   generator: torch.Generator) -> torch.Tensor:
    """CharRNN.generate's loop without top-k: prompt (B, T0) -> ids (B, T0 + max_new_tokens)."""
    tokens = [prompt]
    logits, h = model(prompt)  # (B, T0, V), (L, B, H)
    for i in range(max_new_tokens):
        probs = F.softmax(logits[:, -1] / temperature, dim=-1)  # (B, V)
        tokens.append(torch.multinomial(probs, 1, generator=generator))  # (B, 1)
        if i + 1 < max_new_tokens:
            logits, h = model(tokens[-1], h)  # (B, 1, V), (L, B, H)
    return torch.cat(tokens, dim=1)


def generate_row(gen_tokens: int, reps: int, warmup: int, device: torch.device) -> Result:
    torch.manual_seed(0)
    ours = CharRNN(GEN_VOCAB, GEN_EMBED, GEN_HIDDEN, GEN_LAYERS, GEN_DROPOUT).to(device).eval()
    reference = TorchCharLM.from_rnnlab(ours).eval()
    prompt = torch.randint(0, GEN_VOCAB, (1, GEN_PROMPT_LEN), device=device)  # (1, T0)

    # A fresh generator per call, so that every call samples the same sequence.
    def rnnlab_side():
        ours.generate(prompt, gen_tokens, temperature=GEN_TEMPERATURE, generator=torch.Generator(device).manual_seed(0))

    def torch_side():
        torch_generate(reference, prompt, gen_tokens, GEN_TEMPERATURE, torch.Generator(device).manual_seed(0))

    t_ours, t_ref = time_interleaved([rnnlab_side, torch_side], reps, warmup, device)
    shape = (f"B1 T0={GEN_PROMPT_LEN} V{GEN_VOCAB} D{GEN_EMBED} H{GEN_HIDDEN} L{GEN_LAYERS}, "
             f"{gen_tokens} tokens")
    return make_result("generate", shape, device, [gen_tokens / t for t in t_ours], [gen_tokens / t for t in t_ref],
                       "tokens/s",
                       "nn.Embedding + nn.RNN + nn.Linear loop",
                       f"eval mode, no_grad, multinomial sampling at temperature {GEN_TEMPERATURE}, same weights")


# ------------------------------------------------------------------ end to end
def compose_train_config(conf_dir: str | Path, overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml composed as ``scripts/train.py <overrides>`` would compose it.

    HydraConfig is set so that ``${hydra:...}`` paths resolve; each timed run then gets
    its own output directory (see :func:`pipeline_epoch`).
    """
    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "train.yaml").is_file():
        raise ValueError(f"conf_dir: expected a directory holding train.yaml, got {str(conf_dir)!r}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def pipeline_epoch(cfg: DictConfig) -> Callable[[], None]:
    """rnnlab.train.train(cfg) in a fresh temporary output directory (removed afterwards)."""
    def run():
        with tempfile.TemporaryDirectory(prefix="rnnlab-bench-") as out:
            run_cfg = copy.deepcopy(cfg)
            with open_dict(run_cfg):
                run_cfg.paths.output_dir = out
            train(run_cfg)
    return run


@contextlib.contextmanager
def quiet_pipeline() -> Iterator[None]:
    """Silence Lightning's banners and hints and train()'s summary, which would otherwise be
    printed again by each of the warmup + reps runs of the pipeline."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "rnnlab.train")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


BARE_LOOP = "bare PyTorch loop with torch.nn.RNN"


def run_e2e(row: str, cfg: DictConfig, bare: Callable[[], None], reps: int, warmup: int,
            device: torch.device, shape: str, note: str) -> Result:
    with quiet_pipeline():
        t_ours, t_ref = time_interleaved([pipeline_epoch(cfg), bare], reps, warmup, device)
    return make_result(row, shape, device, t_ours, t_ref, "s", BARE_LOOP, note)


# Settings under which the bare loops do the same work as the pipeline: an Elman tanh RNN,
# independent fixed-length windows or sequences.
BARE_EQUIVALENT = {"model.net.cell": "rnn_tanh", "data.min_len": None, "data.stateful": False,
                   "data.train_windows": "random"}


def check_bare_equivalent(row: str, cfg: DictConfig) -> None:
    for key, expected in BARE_EQUIVALENT.items():
        value = OmegaConf.select(cfg, key, default=expected)
        if value != expected:
            raise ValueError(f"{row}: the bare loop assumes {key}={expected}, got {key}={value!r}; "
                             "remove that override")


def e2e_note(cfg: DictConfig, train_batches: int, val_batches: int, extra: str) -> str:
    """What each side of an end-to-end row does, in the words of the table."""
    clip = cfg.trainer.gradient_clip_val
    clipping = f", gradient-norm clip {clip}" if clip else ""
    return (f"both sides, timed: build the data and the model, 1 training epoch ({train_batches} batches, "
            f"{cfg.model.optimizer['_target_'].rsplit('.', 1)[-1]}{clipping}), 1 full validation pass "
            f"({val_batches} batches). rnnlab side also: Trainer and callbacks, Lightning's sanity-check "
            f"validation (2 batches), torchmetrics, TensorBoard logging with histograms, 2 checkpoints{extra}; "
            "test=false; Hydra's compose is not timed")


def train_epoch(model: nn.Module, batches: Iterator, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                clip: float | None, device: torch.device) -> None:
    model.train()
    for x, y in batches:
        loss = loss_fn(model, x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()


@torch.no_grad()
def validate(model: nn.Module, batches: Iterator, loss_fn: Callable, device: torch.device) -> float:
    """Mean loss over the batches (each weighted by its first dimension)."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for x, y in batches:
        total += loss_fn(model, x.to(device), y.to(device)) * len(x)
        count += len(x)
    return total.item() / count


class TorchClassifier(nn.Module):
    """rnnlab's SequenceClassifier written with torch.nn: RNN, dropout on h_n[-1], Linear.

    Inputs: x (B, T, D). Outputs: logits (B, C).
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, num_layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, num_layers, nonlinearity="tanh", batch_first=True,
                          dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)  # (L, B, H)
        return self.fc(self.dropout(h_n[-1]))  # (B, C)


def classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)  # x (B, T, D), y (B,)


def char_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over B*T characters


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator:
    """(x, y) batches in a random order: randperm, then slices of it."""
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def ordered_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def random_windows(ids: torch.Tensor, seq_len: int, count: int, batch_size: int) -> Iterator:
    """``count`` windows starting anywhere in ids (data.train_windows=random), in batches of
    x (B, T) and y (B, T), y being x shifted one character ahead."""
    offsets = torch.arange(seq_len + 1)
    for start in range(0, count, batch_size):
        starts = torch.randint(0, len(ids) - seq_len, (min(batch_size, count - start), 1))  # (B, 1)
        window = ids[starts + offsets]  # (B, T + 1)
        yield window[:, :-1], window[:, 1:]


def strided_windows(ids: torch.Tensor, seq_len: int, batch_size: int) -> Iterator:
    """Non-overlapping windows in order, as CharDataModule validates."""
    offsets = torch.arange(seq_len + 1)
    starts = torch.arange((len(ids) - seq_len - 1) // seq_len + 1) * seq_len
    for batch in starts.split(batch_size):
        window = ids[batch[:, None] + offsets]  # (B, T + 1)
        yield window[:, :-1], window[:, 1:]


def e2e_classifier_row(conf_dir: str | Path, overrides: Sequence[str], reps: int, warmup: int,
                       device: torch.device) -> Result:
    cfg = compose_train_config(conf_dir, ["model=classifier", *pipeline_overrides(device), *overrides])
    check_bare_equivalent("classifier_overrides", cfg)
    data, net = cfg.data, cfg.model.net

    def bare():
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(data)
        datamodule.setup("fit")
        (x, y), (x_val, y_val) = datamodule.splits["train"].tensors, datamodule.splits["val"].tensors
        model = TorchClassifier(net.input_size, net.hidden_size, net.num_classes, net.num_layers,
                                net.dropout).to(device)
        optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
        train_epoch(model, shuffled_batches(x, y, data.batch_size), classifier_loss, optimizer,
                    cfg.trainer.gradient_clip_val, device)
        validate(model, ordered_batches(x_val, y_val, data.batch_size), classifier_loss, device)

    train_batches, val_batches = math.ceil(data.num_train / data.batch_size), math.ceil(data.num_val / data.batch_size)
    shape = f"seed task: {train_batches} x B{data.batch_size} T{data.seq_len} D{data.input_size}"
    note = e2e_note(cfg, train_batches, val_batches, ", the scheduler step")
    return run_e2e("e2e_classifier", cfg, bare, reps, warmup, device, shape, note)


def e2e_char_row(conf_dir: str | Path, shakespeare: str | None, char_windows: int, overrides: Sequence[str],
                 reps: int, warmup: int, device: torch.device) -> Result:
    if shakespeare is None or not Path(shakespeare).expanduser().is_file():
        why = "no shakespeare path given" if shakespeare is None else f"file not found: {shakespeare}"
        return make_result("e2e_char", "tinyshakespeare", device, None, None, "s", BARE_LOOP, f"skipped: {why}")
    cfg = compose_train_config(conf_dir, ["model=char_rnn", f"data.windows_per_epoch={char_windows}",
                                          *pipeline_overrides(device), *overrides])
    with open_dict(cfg):  # set here, not as an override, so no path needs quoting for Hydra
        cfg.data.path = str(Path(shakespeare).expanduser().resolve())
    check_bare_equivalent("char_overrides", cfg)
    data, net = cfg.data, cfg.model.net

    def bare():
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(data)
        datamodule.setup("fit")
        ids, val_ids = datamodule.ids["train"], datamodule.ids["val"]
        model = TorchCharLM(datamodule.vocab_size, net.embed_dim, net.hidden_size, net.num_layers,
                            net.dropout).to(device)
        optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
        train_epoch(model, random_windows(ids, data.seq_len, data.windows_per_epoch, data.batch_size),
                    char_loss, optimizer, cfg.trainer.gradient_clip_val, device)
        validate(model, strided_windows(val_ids, data.seq_len, data.batch_size), char_loss, device)

    train_batches = math.ceil(data.windows_per_epoch / data.batch_size)
    # CharDataModule's split: the validation text is int(len * fraction) characters.
    val_chars = int(len(Path(data.path).read_text(encoding="utf-8")) * data.splits[1])
    val_batches = math.ceil(((val_chars - data.seq_len - 1) // data.seq_len + 1) / data.batch_size)
    shape = f"tinyshakespeare: {train_batches} x B{data.batch_size} T{data.seq_len}"
    note = e2e_note(cfg, train_batches, val_batches,
                    f", a {cfg.model.sample_length}-character text sample after validation")
    return run_e2e("e2e_char", cfg, bare, reps, warmup, device, shape, note)


def pipeline_overrides(device: torch.device) -> list[str]:
    """One epoch, no test, no progress bar or model summary; loggers and checkpoints stay."""
    return ["trainer.max_epochs=1", "test=false", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]


# ------------------------------------------------------------------------ output
COLUMNS = [f.name for f in fields(Result)]


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _ratio_text(r: Result) -> str:
    """The ratio, with its quartiles in brackets when it has them: "0.78 (0.77-0.79)"."""
    if r.ratio is None:
        return ""
    spread = "" if r.ratio_q1 is None else f" ({r.ratio_q1:.2f}-{r.ratio_q3:.2f})"
    return f"{r.ratio:.2f}{spread}"


def markdown_table(results: Sequence[Result]) -> str:
    header = ["row", "shape", "device", "rnnlab", "reference", "unit", "ratio", "reference name", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        cells = [r.row, r.shape, r.device, _fmt(r.rnnlab), _fmt(r.reference), r.unit, _ratio_text(r),
                 r.reference_name, r.target, r.meets_target]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> str:
    """One line per row kind saying what was measured (the first note seen for that row)."""
    seen: dict[str, str] = {}
    for r in results:
        seen.setdefault(r.row, r.note)
    return "\n".join(f"- **{row}**: {note}" for row, note in seen.items() if note)


def write_results(results: Sequence[Result], out: Path, header: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "benchmark.csv", out / "benchmark.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow({k: "" if v is None else v for k, v in asdict(r).items()})
    md_path.write_text(f"# rnnlab benchmark\n\n{header}\n\n{markdown_table(results)}\n\n{notes(results)}\n")
    return csv_path, md_path


# ------------------------------------------------------------------- entry point
def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _names(name: str, value: str | Sequence, known: Sequence[str]) -> list:
    items = value.split(",") if isinstance(value, str) else list(value)
    unknown = [item for item in items if isinstance(item, str) and item not in known]
    if unknown or not items:
        raise ValueError(f"{name}: expected a non-empty list of {', '.join(known)}, got {items!r}")
    return items


def _load_average() -> str:
    """The 1-minute load average: other busy processes make every time here slower and noisier."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def run(shapes: str | Sequence[str | Shape] = tuple(SHAPES), rows: str | Sequence[str] = ROWS, reps: int = 10,
        warmup: int = 2, threads: int = 2, device: str = "cpu", out: str | Path = "outputs/benchmarks",
        cells: str | Sequence[str] = tuple(TORCH_MODULES), packed: bool = True,
        shakespeare: str | None = None, conf_dir: str | Path = "conf", gen_tokens: int = 200,
        char_windows: int = 3200, classifier_overrides: Sequence[str] = (),
        char_overrides: Sequence[str] = ()) -> list[Result]:
    """Run the selected rows, print the table, write benchmark.csv and benchmark.md to ``out``.

    Args:
        shapes: names from :data:`SHAPES` (a list, or comma-separated), or :class:`Shape`
            objects; used by the forward, backward, stepwise and memory rows.
        rows: names from :data:`ROWS` (a list, or comma-separated).
        cells: cells of the core rows, from :data:`TORCH_MODULES` (a list, or comma-separated),
            each against its torch.nn module; the targets apply to ``rnn_tanh``, and the
            stepwise row is run for it only.
        packed: let rnnlab use oneDNN's packed weights (:mod:`rnnlab.models._matmul`);
            ``False`` measures rnnlab with ``torch.addmm`` only, as on a build without oneDNN.
        reps: timed repetitions per measurement; each time is their median.
        warmup: untimed repetitions before them.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).
        device: "cpu" or "cuda".
        out: directory of benchmark.csv and benchmark.md.
        shakespeare: path to tinyshakespeare.txt for e2e_char; None or a missing file skips the row.
        conf_dir: the directory holding train.yaml, for the e2e rows.
        gen_tokens: tokens sampled per generate call.
        char_windows: training windows in the e2e_char epoch (data.windows_per_epoch).
        classifier_overrides, char_overrides: extra Hydra overrides of the e2e runs (e.g. tiny
            data for tests); the bare loop reads the same composed config, so both sides follow them.

    Returns:
        The rows of the table.
    """
    shapes = [s if isinstance(s, Shape) else SHAPES[s] for s in _names("shapes", shapes, list(SHAPES))]
    rows = _names("rows", rows, ROWS)
    cells = _names("cells", cells, list(TORCH_MODULES))
    reps, warmup = _positive("reps", reps), _positive("warmup", warmup, minimum=0)
    threads, gen_tokens = _positive("threads", threads), _positive("gen_tokens", gen_tokens)
    char_windows = _positive("char_windows", char_windows)
    dev = _device(device)

    old_threads, old_tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    # compose() for the e2e rows replaces the HydraConfig of a caller under @hydra.main.
    old_hydra = HydraConfig.instance().cfg
    load_before = _load_average()
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = False
    results: list[Result] = []

    def add(result: Result) -> None:
        results.append(result)
        ratio = "skipped" if result.ratio is None else f"ratio {_ratio_text(result)}"
        print(f"  {result.row:<15} {result.shape:<45} {ratio}", flush=True)

    try:
        with packed_matmul(packed):
            for cell in cells if set(rows) & set(CORE_ROWS) else []:
                for shape in shapes:
                    for result in core_rows(shape, rows, reps, warmup, dev, cell):
                        add(result)
            if "generate" in rows:
                add(generate_row(gen_tokens, reps, warmup, dev))
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
              f"{'oneDNN packed weights on' if packed else 'packed weights off (torch.addmm only)'}, "
              f"median of {reps} interleaved repetitions after {warmup} warm-up, load average {load_before} before "
              f"and {_load_average()} after (on {os.cpu_count()} cores). Ratios are rnnlab / reference "
              "(times and memory: lower is better; generate, tokens/s: higher is better): the median of the "
              "repetitions' ratios, and in brackets their 25th to 75th percentile; the rnnlab and reference "
              "columns are each side's median.")
    csv_path, md_path = write_results(results, Path(out), header)
    print(f"\n{header}\n\n{markdown_table(results)}\n\n{notes(results)}\n\nWrote {csv_path} and {md_path}")
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--cells", default=",".join(TORCH_MODULES),
                        help=f"cells of the core rows, comma-separated, of {', '.join(TORCH_MODULES)}")
    parser.add_argument("--no-packed", dest="packed", action="store_false",
                        help="rnnlab without oneDNN's packed weights (torch.addmm only)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions before them")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="outputs/benchmarks", help="directory of benchmark.csv/.md")
    parser.add_argument("--shakespeare", default=None, help="tinyshakespeare.txt for e2e_char (else skipped)")
    parser.add_argument("--conf-dir", default="conf", help="directory holding train.yaml")
    parser.add_argument("--gen-tokens", type=int, default=200, help="tokens per generate call")
    parser.add_argument("--char-windows", type=int, default=3200, help="training windows in the e2e_char epoch")
    parser.add_argument("--classifier-overrides", nargs="*", default=[], help="Hydra overrides for e2e_classifier")
    parser.add_argument("--char-overrides", nargs="*", default=[], help="Hydra overrides for e2e_char")
    return run(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
