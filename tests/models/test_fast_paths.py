"""The CPU fast paths in float32 against torch.nn: oneDNN's packed weights for the per-step
products and the hoisted projections (taken above their size thresholds), and the same
sizes with packing switched off (``torch.addmm`` only). The float64 parity tests elsewhere
run the ``addmm`` path, as packing is float32-only."""

import pytest
import torch

from helpers import TORCH_RNNS, flat_state
from rnnlab.models import RNN
from rnnlab.models.kernels import compiled
from rnnlab.models.kernels import matmul as _matmul
from rnnlab.models.kernels.matmul import StepWeight, packed_matmul

needs_onednn = pytest.mark.skipif(not _matmul._AVAILABLE, reason="this PyTorch build has no oneDNN")
# Big enough for both thresholds: B*H*G*H >= 2^21 per step, T*B*D*G*H >= 2^25 per projection.
B, T, D, H = 64, 32, 96, 192


def _run(module, x, h0):
    xi = x.clone().requires_grad_()
    hi = [s.clone().requires_grad_() for s in h0]
    out, h_n = module(xi, tuple(hi) if len(hi) == 2 else hi[0])
    loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + sum((s ** 2).sum() for s in flat_state(h_n))
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [xi, *hi, *params])
    return [out, *flat_state(h_n), *grads[:len(hi) + 1]], dict(zip(params, grads[len(hi) + 1:]))


@needs_onednn
@pytest.mark.parametrize("cell", list(TORCH_RNNS))
@pytest.mark.parametrize("packed", [True, False])
def test_float32_fast_paths_match_torch(cell, packed):
    torch.manual_seed(0)
    ref = TORCH_RNNS[cell](D, H, 2, batch_first=True)
    mine = RNN.from_torch(ref)
    with packed_matmul(packed):
        for layer, cell_module in enumerate(mine.cells):  # the sizes take the path under test
            assert (StepWeight(cell_module.Whh.weight, B).packed is not None) == packed
            assert _matmul._packable(cell_module.Wxh.weight, T * B, _matmul.MIN_PACKED_LINEAR_MACS) == packed
        x = torch.randn(B, T, D)
        h0 = [torch.randn(2, B, H) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
        ours, our_grads = _run(mine, x, h0)
    theirs, their_grads = _run(ref, x, h0)
    pairs = [(our_grads[mine_p], their_grads[ref_p]) for mine_p, ref_p in mine.weight_pairs(ref)]
    # float32 with different summation orders: compare relative to each tensor's scale.
    for a, b in [*zip(ours, theirs, strict=True), *pairs]:
        torch.testing.assert_close(a, b, atol=2e-5 * b.abs().max().item() + 1e-6, rtol=1e-4)


def test_packed_matmul_switch_restores_the_previous_setting():
    before = _matmul._enabled
    with packed_matmul(False):
        assert not _matmul._enabled
        with packed_matmul(True):
            assert _matmul._enabled
        assert not _matmul._enabled
    assert _matmul._enabled == before


def test_small_or_float64_products_stay_on_addmm():
    assert StepWeight(torch.randn(64, 64), 64).packed is None  # (64, 64) x (64, 64): below the threshold
    assert StepWeight(torch.randn(512, 512, dtype=torch.float64), 64).packed is None
    w, x, add = torch.randn(32, 16), torch.randn(8, 16), torch.randn(8, 32)
    torch.testing.assert_close(StepWeight(w, 8, bias=torch.ones(32))(x, add), x @ w.t() + add + 1)


def _gradients_under(module, x, lengths, autocast_dtype=None):
    """Outputs, final state and every gradient of a forward + backward, optionally under CPU autocast."""
    module.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out, h_n = module(xi, lengths=lengths)
        loss = (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum() + sum(
            (s.float() ** 2).sum() for s in flat_state(h_n))
    loss.backward()
    return [out, *flat_state(h_n)], [xi.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("cell", list(TORCH_RNNS))
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("size", [(20, 10, 64), (32, 96, 192)], ids=["seed", "packed"])
def test_every_cell_trains_under_bf16_autocast_close_to_float32(cell, varlen, size):
    """Mixed precision (trainer.precision=bf16-mixed): the Python recurrences run in
    autocast's dtype, forward and backward, the compiled loops in float32 at these sizes
    (test_compiled.py has their bfloat16 form), and all stay within bf16's precision of
    float32. The 'packed' size is one where float32 runs oneDNN's packed products."""
    torch.manual_seed(0)
    T, D, H = size
    rnn = RNN(D, H, 2, cell=cell)
    x = torch.randn(8, T, D)
    lengths = torch.randint(1, T + 1, (8,)) if varlen else None
    ref_values, ref_grads = _gradients_under(rnn, x, lengths)
    values, grads = _gradients_under(rnn, x, lengths, torch.bfloat16)
    if not varlen:
        # the Python loops compute in bf16, not silently in float32; the compiled loops keep
        # their state, and so their outputs, in float32 (test_compiled.py has their tests)
        compiled_loops = compiled.extension() is not None
        assert values[0].dtype == (torch.float32 if compiled_loops else torch.bfloat16)
    assert all(g.dtype == torch.float32 for g in grads)  # the float32 weights get float32 gradients
    # bf16 keeps 8 bits of mantissa; over a 2-layer recurrence of 20-32 steps the outputs and
    # gradients stay within about 1% (6% for the unbounded ReLU state) of float32's.
    for i, (got, want) in enumerate(zip([*values, *grads], [*ref_values, *ref_grads])):
        error = ((got.float() - want).norm() / want.norm()).item()
        assert error < 0.1, f"{cell}: tensor {i} differs from float32 by {error:.1%}"


@needs_onednn
def test_timing_the_packed_product_leaves_the_random_numbers_alone(monkeypatch):
    """The packed-or-addmm choice is timed on fixed inputs from a generator of its own: a run's
    random numbers do not depend on whether a product was timed."""
    monkeypatch.setattr(_matmul, "_timed", {})
    state = torch.get_rng_state()
    choice = _matmul._packing_pays(256, 64, 64)
    assert isinstance(choice, bool) and (64, 64, 256, torch.get_num_threads()) in _matmul._timed
    assert torch.equal(torch.get_rng_state(), state)


@needs_onednn
def test_deterministic_runs_pack_by_size_without_timing(monkeypatch):
    monkeypatch.setattr(_matmul, "_packing_pays", lambda *a: pytest.fail("a deterministic run must not time"))
    weight = torch.zeros(1024, 256)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert _matmul._packable(weight, 64)  # 2^24 multiply-adds: above the threshold
        assert not _matmul._packable(weight[:16, :16], 64)
    finally:
        torch.use_deterministic_algorithms(previous)
