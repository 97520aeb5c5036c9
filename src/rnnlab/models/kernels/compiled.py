"""The recurrences' time loops compiled: ``csrc/recurrences.cpp``, built on first use.

What it speeds up: per step the Python loops of :mod:`.recurrences` make one product and
about ten element-wise ATen calls, each a few microseconds of Python and dispatch; at the
seed shape (B 64, H 64) that, not arithmetic, is most of a step. The C++ loops of the Elman
cell and the GRU make the same product and do all of the step's element-wise work in one
pass over the (B, H) units, vectorised by the compiler, and the backwards likewise. The
LSTM's step is one fused pass: the product W_hh h_{t-1} is summed in registers, a tile of
batch rows by units with all four gates at a time, and the tile's activations, c_t and h_t
are computed there (its backward the same way), which is what lets it match oneDNN's fused
LSTM behind ``torch.nn.LSTM``. The loops also run variable-length batches (``mask``)
without falling back to autograd through the step loop: a sequence that has ended keeps its
state, which is what :func:`rnnlab.models.cells.recur_masked` defines. By how much, on 2
cores at the seed shape: the GRU's forward from 1.7x to about 0.7x ``torch.nn.GRU``'s time,
the LSTM's from 3.2x to about 0.85x ``torch.nn.LSTM``'s, a padded batch from autograd through
the step loop to 0.4x ``pack_padded_sequence`` + torch.nn (docs/performance.md has every
shape).

Under the CPU's bfloat16 autocast the GRU's and LSTM's loops also run mixed: each step's
product in bfloat16 around a float32 state (``GRU`` with a bfloat16 input, ``MixedLSTM``), where
:func:`.recurrences.autocast_loop` finds the products large enough; smaller ones run the
float32 loops (docs/performance.md, item 17).

What it must equal: the Python recurrences and the readable cells, and torch.nn, in float64
to 1e-10 and in float32 to torch.nn's float32 tolerance, with and without lengths
(tests/models/test_compiled.py). float32 computes exp as a polynomial accurate to about one
unit in the last place (the compiler cannot vectorise a call to ``expf``); float64 uses
``std::exp``.

Building: ``torch.utils.cpp_extension.load`` compiles the file with the machine's C++
compiler and ninja, with OpenMP where PyTorch uses it (:func:`_openmp_flags`), the first
time a CPU recurrence runs (about 30 s), and caches the build
(in ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``); later processes load
it in well under a second. Where it cannot be built (no compiler, no ninja) one log line
says why and the Python loops run instead: the same results, slower.
``RNNLAB_COMPILED=0`` switches the compiled loops off (and never builds them);
``compiled_loops(False)`` does so within a block.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from .matmul import packed_weight

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "recurrences.cpp"
CHUNK_STEPS = 16  # steps projected at a time by the *_inference loops (StepInputs::kChunk)

_enabled = True
_extension = None
_tried = False


@contextlib.contextmanager
def compiled_loops(enabled: bool) -> Iterator[None]:
    """Within the block, use (``True``) or never use (``False``) the compiled time loops."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where PyTorch's own threads are GNU OpenMP's (its Linux builds): the loops'
    ``at::parallel_for`` is a header template that runs on one thread unless the extension is
    compiled with OpenMP. The extension then needs ``libgomp.so.1``, the library PyTorch has
    already loaded under that name, so both share one thread pool (tests/models/test_compiled.py
    checks which runtime the extension calls). Elsewhere (macOS's libomp, other compilers) no flag:
    the loops run on one thread, as before."""
    if platform.system() != "Linux" or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return []
    return ["-fopenmp"]


def _flags() -> tuple[str, list[str]]:
    """(build name, compiler flags): the widest vectors the CPU has, as ATen's own CPU kernels
    choose them (``torch.backends.cpu.get_cpu_capability``: AVX-512, AVX2 with FMA, else the
    architecture's baseline), and OpenMP (:func:`_openmp_flags`). ``-fno-trapping-math`` lets
    the compiler vectorise the activation loops; it assumes no floating-point traps, which
    PyTorch never enables."""
    flags = ["-O3", "-fno-trapping-math", *_openmp_flags()]
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "DEFAULT"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "rnnlab_recurrences", flags
    if capability == "AVX512":
        return "rnnlab_recurrences_avx512", [*flags, "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
                                             "-mprefer-vector-width=512"]
    if capability == "AVX2":
        return "rnnlab_recurrences_avx2", [*flags, "-mavx2", "-mfma"]
    return "rnnlab_recurrences", flags


@contextlib.contextmanager
def _build_lock(cpp_extension, name: str):
    """Hold an exclusive lock on the extension's build directory while it is built or loaded;
    yield the directory.

    torch's own lock there is a file that exists while a process builds: a process killed
    at that moment (``kill -9`` of a training run that had just started) leaves it behind,
    and every later process waits for it forever. The ``flock`` taken here is released by
    the kernel when its process dies, and whoever holds it is the only rnnlab process
    building, so a leftover torch lock file under it is stale and removed.
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        directory = Path(root) / name
    elif hasattr(cpp_extension, "_get_build_directory"):  # torch's default place, e.g. ~/.cache/.../py311_cpu/<name>
        directory = Path(cpp_extension._get_build_directory(name, False))
    else:
        directory = Path(cpp_extension.get_default_build_root()) / name
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield str(directory)
        return
    with open(directory / "rnnlab.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (directory / "lock").unlink(missing_ok=True)
        yield str(directory)


def _build():
    """Compile (or load the cached build of) the extension; None, with one log line, if it cannot be."""
    from torch.utils import cpp_extension

    # pip puts ninja (a dependency) beside this Python, which need not be on PATH.
    scripts = sysconfig.get_path("scripts")
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    name, flags = _flags()
    try:
        with _build_lock(cpp_extension, name) as build_directory:
            return cpp_extension.load(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=_openmp_flags(),
                                      build_directory=build_directory, verbose=False)
    except Exception as err:  # noqa: BLE001 (a missing compiler, ninja or header fails in many ways)
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        log.warning(f"rnnlab: the compiled recurrences could not be built ({reason[:200]}); the Python loops "
                    "run instead (same results, slower). RNNLAB_COMPILED=0 skips the attempt.")
        return None


def extension():
    """The compiled module, built on first call; None where switched off or unavailable."""
    global _extension, _tried
    if not _enabled or os.environ.get("RNNLAB_COMPILED", "1") == "0":
        return None
    if not _tried:
        _tried = True
        _extension = _build()
    return _extension


def usable(projected: torch.Tensor):
    """The compiled module if it can run a recurrence on ``projected``: float32 or float64 on
    the CPU, outside 16-bit autocast. Else None (the Python loops handle the rest)."""
    if projected.device.type != "cpu" or projected.dtype not in (torch.float32, torch.float64):
        return None
    if torch.is_autocast_enabled("cpu"):
        return None
    return extension()


def mixed_usable(projected: torch.Tensor):
    """The compiled module if ``projected`` is on the CPU under bfloat16 autocast
    (``trainer.precision=bf16-mixed``), where the compiled loops run as
    :func:`.recurrences.autocast_loop` chooses. Else None."""
    if projected.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    return extension()


@functools.cache
def native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 products natively on this CPU (AVX-512 BF16, AMX or
    AVX-512 with its bfloat16 conversions); elsewhere they are converted and slower than
    float32's. Asked once per process: the CPU does not change."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def step_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The compiled loops' mask: (T, B, 1) bool (True at valid steps) as (T, B), or None."""
    return None if mask is None else mask.reshape(mask.shape[0], mask.shape[1]).contiguous()  # (T, B)


def _without_autocast(backward):
    """A compiled Function's backward with CPU autocast off: its products must run in the
    dtypes its forward chose, also when ``backward`` is called inside an autocast block."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        with torch.autocast("cpu", enabled=False):
            return backward(ctx, *grads)
    return run


class Elman(torch.autograd.Function):
    """The Elman recurrence in C++ (see :class:`.recurrences.ElmanRecurrence`, which it equals).

    Inputs: projected (T*B, H) contiguous, rows time-major, a temporary the caller gives up
    (the states are written over it); h0 (B, H); w_hh (H, H); relu; mask (T, B) bool or None;
    save: keep what the backward needs (False when no gradient will be asked for).
    Outputs: states (T*B, H) in the memory of ``projected``, ended sequences keeping their
    state; h_T (B, H).
    """

    @staticmethod
    def forward(ctx, projected, h0, w_hh, relu, mask, save):
        ctx.mark_dirty(projected)
        ctx.set_materialize_grads(False)
        h0, w_hh = h0.contiguous(), w_hh.contiguous()
        states = projected.view(-1, *h0.shape)  # (T, B, H)
        extension().elman_forward(states, h0, w_hh, relu, mask)
        if save:
            ctx.save_for_backward(projected, h0, w_hh)
        ctx.relu, ctx.mask = relu, mask
        return projected, states[-1].clone()

    @staticmethod
    @_without_autocast
    @once_differentiable
    def backward(ctx, grad_states, grad_h_n):
        projected, h0, w_hh = ctx.saved_tensors
        states = projected.view(-1, *h0.shape)  # (T, B, H)
        grad_states = None if grad_states is None else grad_states.reshape(states.shape).contiguous()
        grad_pre, grad_h0 = extension().elman_backward(states, h0, w_hh, packed_weight(w_hh.t(), h0.shape[0]),
                                                       ctx.relu, ctx.mask, grad_states, _contiguous(grad_h_n))
        grad_w_hh = _weight_grad(grad_pre, states, h0)
        return grad_pre.view(projected.shape), grad_h0, grad_w_hh, None, None, None


class GRU(torch.autograd.Function):
    """The GRU recurrence in C++ (see :class:`.recurrences.GRURecurrence`).

    Inputs: projected (T*B, 3H), rows time-major; h0 (B, H); w_hh (3H, H); b_hn (H,) or None;
    mask (T, B) or None; save as :class:`Elman`.
    Outputs: states (T, B, H); h_T (B, H).

    Mixed precision (:func:`mixed_usable`): ``projected`` in bfloat16 and h0 in float32. The
    loop's products then run in bfloat16 (a bfloat16 copy of W_hh, made here) and the state,
    the gates and the gradients through time in float32; states and h_T are float32, and the
    gradients have each input's own type.
    """

    @staticmethod
    def forward(ctx, projected, h0, w_hh, b_hn, mask, save):
        ctx.set_materialize_grads(False)
        mixed = projected.dtype == torch.bfloat16 and h0.dtype == torch.float32
        h0 = h0.contiguous()
        # The products' W_hh: bfloat16 in mixed precision (oneDNN's packing is for float32).
        w_hh = w_hh.to(torch.bfloat16) if mixed else w_hh.contiguous()
        packed = None if mixed else packed_weight(w_hh, h0.shape[0])
        steps = projected.contiguous().view(-1, h0.shape[0], projected.shape[1])  # (T, B, 3H)
        states, rz, hn, n = extension().gru_forward(steps, h0, w_hh, packed, b_hn, mask, save)
        if save:
            ctx.save_for_backward(rz, hn, n, states, h0, w_hh)
        ctx.mask, ctx.has_bias, ctx.mixed = mask, b_hn is not None, mixed
        return states, states[-1].clone()

    @staticmethod
    @_without_autocast
    @once_differentiable
    def backward(ctx, grad_states, grad_h_n):
        rz, hn, n, states, h0, w_hh = ctx.saved_tensors
        H = h0.shape[1]
        packed_t = None if ctx.mixed else packed_weight(w_hh.t(), h0.shape[0])
        # grad_hh and grad_pre_n come in W_hh's type: bfloat16 in mixed precision, the input of
        # the weight's product below and of projected's gradient.
        grad_hh, grad_pre_n, grad_h0 = extension().gru_backward(
            rz, hn, n, states, h0, w_hh, packed_t, ctx.mask, _contiguous(grad_states), _contiguous(grad_h_n))
        grad_projected = torch.cat([grad_hh[..., :2 * H], grad_pre_n], dim=2).view(-1, 3 * H)  # (T*B, 3H)
        grad_w_hh = _weight_grad(grad_hh, states, h0)
        grad_b_hn = grad_hh[..., 2 * H:].sum((0, 1), dtype=h0.dtype) if ctx.has_bias else None
        return grad_projected, grad_h0, grad_w_hh, grad_b_hn, None, None


class LSTM(torch.autograd.Function):
    """The LSTM recurrence in C++ (see :class:`.recurrences.LSTMRecurrence`).

    Inputs: projected (T*B, 4H) contiguous, rows time-major, a temporary the caller gives up
    (the activated gates are written over it); h0, c0 (B, H); w_hh (4H, H); mask (T, B) or
    None; save as :class:`Elman`.
    Outputs: states (T, B, H); h_T, c_T (B, H); the gates (T*B, 4H), in the memory of
    ``projected`` (returned because the Function wrote over it; nothing reads them).
    """

    @staticmethod
    def forward(ctx, projected, h0, c0, w_hh, mask, save):
        ctx.mark_dirty(projected)
        ctx.set_materialize_grads(False)
        h0, c0, w_hh = h0.contiguous(), c0.contiguous(), w_hh.contiguous()
        gates = projected.view(-1, h0.shape[0], projected.shape[1])  # (T, B, 4H)
        states, c_n, cells, tanh_cells = extension().lstm_forward(gates, h0, c0, w_hh, mask, save)
        if save:
            ctx.save_for_backward(projected, cells, tanh_cells, states, h0, c0, w_hh)
        ctx.mask = mask
        return states, states[-1].clone(), c_n, projected

    @staticmethod
    @_without_autocast
    @once_differentiable
    def backward(ctx, grad_states, grad_h_n, grad_c_n, _):
        projected, cells, tanh_cells, states, h0, c0, w_hh = ctx.saved_tensors
        gates = projected.view(-1, h0.shape[0], projected.shape[1])  # (T, B, 4H)
        grad_gates, grad_h0, grad_c0 = extension().lstm_backward(
            gates, cells, tanh_cells, states, h0, c0, w_hh, ctx.mask,
            _contiguous(grad_states), _contiguous(grad_h_n), _contiguous(grad_c_n))
        grad_w_hh = _weight_grad(grad_gates, states, h0)
        return grad_gates.view(projected.shape), grad_h0, grad_c0, grad_w_hh, None, None


class MixedLSTM(torch.autograd.Function):
    """The LSTM recurrence in mixed precision, in C++ (``lstm_mixed_forward``): under bfloat16
    autocast (:func:`mixed_usable`) each step's product W_hh h_{t-1} runs in bfloat16 (a
    bfloat16 copy of W_hh, made here) and the gates, c and h in float32. The float32 loop of
    :class:`LSTM` sums its products in its own float32 tiles and has no bfloat16 form.

    Inputs: projected (T*B, 4H) bfloat16, rows time-major; h0, c0 (B, H) float32; w_hh (4H, H);
    mask (T, B) or None; save as :class:`Elman`. Outputs: states (T, B, H); h_T, c_T (B, H),
    all float32; the gradients have each input's own type.
    """

    @staticmethod
    def forward(ctx, projected, h0, c0, w_hh, mask, save):
        ctx.set_materialize_grads(False)
        h0, c0 = h0.contiguous(), c0.contiguous()
        w_low = w_hh.to(torch.bfloat16)
        steps = projected.contiguous().view(-1, h0.shape[0], projected.shape[1])  # (T, B, 4H)
        states, c_n, gates, cells, tanh_cells = extension().lstm_mixed_forward(steps, h0, c0, w_low, mask, save)
        if save:
            ctx.save_for_backward(gates, cells, tanh_cells, states, h0, c0, w_low)
        ctx.mask = mask
        return states, states[-1].clone(), c_n

    @staticmethod
    @_without_autocast
    @once_differentiable
    def backward(ctx, grad_states, grad_h_n, grad_c_n):
        gates, cells, tanh_cells, states, h0, c0, w_low = ctx.saved_tensors
        grad_gates, grad_h0, grad_c0 = extension().lstm_mixed_backward(
            gates, cells, tanh_cells, states, h0, c0, w_low, ctx.mask,
            _contiguous(grad_states), _contiguous(grad_h_n), _contiguous(grad_c_n))  # grad_gates (T, B, 4H) bfloat16
        grad_w_hh = _weight_grad(grad_gates, states, h0)
        return grad_gates.view(-1, grad_gates.shape[-1]), grad_h0, grad_c0, grad_w_hh, None, None


class MinScan(torch.autograd.Function):
    """A minGRU (``gates`` 2) or minLSTM (``gates`` 3) layer after its input projection, in
    C++: the coefficients of h_t = a_t h_{t-1} + b_t computed from the projected input on the
    fly and the recurrence run over time, the batch rows split between the threads (each
    row's units are independent of the others'); the backward recomputes the coefficients.
    It equals :func:`rnnlab.models.modern_cells.log_space_scan` of the cells' log coefficients.

    Inputs: projected (T, B, G*H); h0 (B, H); mask (T, B) bool or None (an ended row keeps
    its state); gates. Outputs: h (T, B, H).
    """

    @staticmethod
    def forward(ctx, projected, h0, mask, gates):
        name = "min_gru" if gates == 2 else "min_lstm"
        projected, h0 = projected.contiguous(), h0.contiguous()
        h = getattr(extension(), f"{name}_scan")(projected, h0, mask)
        ctx.save_for_backward(projected, h, h0)
        ctx.name, ctx.mask = name, mask
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        projected, h, h0 = ctx.saved_tensors
        grad_projected, grad_h0 = getattr(extension(), f"{ctx.name}_scan_backward")(
            projected, h, h0, ctx.mask, grad_h.contiguous())
        return grad_projected, grad_h0, None, None


class IndRNNScan(torch.autograd.Function):
    """An IndRNN layer after its input projection, in C++: h_t = relu(p_t + u * h_{t-1}) over
    time, the batch rows split between the threads (every unit's recurrence is its own); the
    backward runs the recurrence back in C++ and sums u's gradient on the way (no (T, B, H)
    temporaries beyond the input's gradient).

    Inputs: projected (T, B, H); h0 (B, H); u (H,); mask (T, B) bool or None (an ended row
    keeps its state). Outputs: h (T, B, H).
    """

    @staticmethod
    def forward(ctx, projected, h0, u, mask):
        h0, u = h0.contiguous(), u.contiguous()
        h = extension().indrnn_scan(projected.contiguous(), h0, u, mask)
        ctx.save_for_backward(h, h0, u)
        ctx.mask = mask
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        h, h0, u = ctx.saved_tensors
        grad_projected, grad_h0, grad_u = extension().indrnn_scan_backward(h, h0, u, ctx.mask, grad_h.contiguous())
        return grad_projected, grad_h0, grad_u, None


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _weight_grad(grad_pre: torch.Tensor, states: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """W_hh's gradient, sum over t of grad_pre_t^T h_{t-1}, as one (G*H, T*B) x (T*B, H) product
    (steps of ended sequences have zero grad_pre, so they add nothing), in grad_pre's dtype
    (bfloat16 in mixed precision, the states cast to it) and returned in h0's."""
    low = grad_pre.dtype
    grad = grad_pre[1:].flatten(0, 1).t() @ states[:-1].flatten(0, 1).to(low)
    return grad.addmm_(grad_pre[0].t(), h0.to(low)).to(h0.dtype)
