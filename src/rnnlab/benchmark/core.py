"""The core rows: rnnlab's RNN against torch.nn.RNN / GRU / LSTM holding the same weights,
forward, forward + backward, the seed's step loop, and memory, at the shapes of :data:`SHAPES`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..models import RNN
from .timing import Result, make_result, ms, time_interleaved


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
# The torch.nn module each cell is compared with (batch_first; the Elman cell with tanh).
TORCH_MODULES = {"rnn_tanh": ("torch.nn.RNN", nn.RNN), "gru": ("torch.nn.GRU", nn.GRU),
                 "lstm": ("torch.nn.LSTM", nn.LSTM)}
TARGETED_CELL = "rnn_tanh"  # the stepwise row and the memory target are for the default RNN only


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


def under_autocast(run: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``run`` under bfloat16 autocast on ``device``, as Lightning's ``precision="bf16-mixed"`` runs a step."""
    def mixed():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            run()
    return mixed


def core_rows(shape: Shape, rows: Sequence[str], reps: int, warmup: int, device: torch.device,
              cell: str = TARGETED_CELL) -> list[Result]:
    """The forward, backward, stepwise, memory, lengths and mixed rows selected in ``rows`` for one
    shape and cell (stepwise only for the default cell)."""
    ours, reference, x = core_pair(shape, device, cell)
    torch_name = TORCH_MODULES[cell][0]
    label = str(shape) if cell == TARGETED_CELL else f"{shape} {cell}"
    targeted = cell == TARGETED_CELL
    results = []
    if "forward" in rows:
        t_ours, t_ref = time_interleaved([forward_only(ours, x), forward_only(reference, x)], reps, warmup, device)
        results.append(make_result("forward", label, device, ms(t_ours), ms(t_ref), "ms", torch_name,
                                   "forward under torch.no_grad", cell=cell))
    if "backward" in rows:
        t_ours, t_ref = time_interleaved([forward_backward(ours, ours, x), forward_backward(reference, reference, x)],
                                         reps, warmup, device)
        results.append(make_result("backward", label, device, ms(t_ours), ms(t_ref), "ms", torch_name,
                                   "forward + backward (gradients for the input and every weight)", cell=cell))
    if "stepwise" in rows and targeted:
        t_ours, t_step = time_interleaved([forward_backward(ours, ours, x),
                                           forward_backward(ours.forward_stepwise, ours, x)], reps, warmup, device)
        results.append(make_result("stepwise", label, device, ms(t_ours), ms(t_step), "ms",
                                   "rnnlab RNN.forward_stepwise",
                                   "forward + backward; rnnlab's layer-major RNN.forward against the seed's "
                                   "step-by-step loop (both rnnlab; no target)"))
    if "memory" in rows:
        results.append(memory_row(label, ours, reference, x, device, torch_name, targeted))
    if "lengths" in rows:
        lengths = torch.randint(shape.T // 4, shape.T + 1, (shape.B,), generator=torch.Generator().manual_seed(0))
        lengths[0] = shape.T  # the batch's longest sequence fills it
        t_ours, t_ref = time_interleaved([forward_backward(partial(ours, lengths=lengths), ours, x),
                                          forward_backward(packed(reference, lengths), reference, x)],
                                         reps, warmup, device)
        results.append(make_result("lengths", label, device, ms(t_ours), ms(t_ref), "ms",
                                   f"pack_padded_sequence + {torch_name}",
                                   "forward + backward of a padded batch, lengths uniform in [T/4, T]; the "
                                   "reference packs and unpacks", cell=cell))
    if "mixed" in rows:
        t_ours, t_ref = time_interleaved([under_autocast(forward_backward(ours, ours, x), device),
                                          under_autocast(forward_backward(reference, reference, x), device)],
                                         reps, warmup, device)
        results.append(make_result("mixed", label, device, ms(t_ours), ms(t_ref), "ms", f"{torch_name}, same autocast",
                                   "forward + backward under bfloat16 autocast (trainer.precision=bf16-mixed), "
                                   "both sides", targeted=False, cell=cell))
    return results


SCAN_PAIRS = (("min_gru", "gru"), ("min_lstm", "lstm"))  # a minimal cell and the classic cell it simplifies


def scan_rows(shape: Shape, reps: int, warmup: int, device: torch.device) -> list[Result]:
    """The ``scan`` rows: forward + backward of minGRU and minLSTM (one parallel scan over time
    per layer) against rnnlab's own GRU and LSTM (a sequential loop) of the same sizes."""
    results = []
    for minimal, classic in SCAN_PAIRS:
        torch.manual_seed(0)
        ours = RNN(shape.D, shape.H, shape.L, cell=minimal).to(device)
        reference = RNN(shape.D, shape.H, shape.L, cell=classic).to(device)
        x = torch.randn(shape.B, shape.T, shape.D, device=device)  # (B, T, D)
        t_ours, t_ref = time_interleaved([forward_backward(ours, ours, x), forward_backward(reference, reference, x)],
                                         reps, warmup, device)
        results.append(make_result("scan", f"{shape} {minimal}", device, ms(t_ours), ms(t_ref), "ms",
                                   f"rnnlab {classic}", "forward + backward of the minimal cell's parallel scan "
                                   "against the classic cell's sequential loop, same B, T, D, H, L", cell=""))
    return results


def packed(module: nn.RNNBase, lengths: torch.Tensor) -> Callable:
    """``module`` on a padded batch as torch.nn reads one: packed by ``lengths``, run, and
    padded back; returns (outputs (B, T, H), h_n)."""
    def forward(x: torch.Tensor):
        sequence = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        outputs, h_n = module(sequence)
        return pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])[0], h_n
    return forward


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
