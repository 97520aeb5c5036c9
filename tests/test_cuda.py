"""The CUDA paths: every cell against cuDNN's torch.nn modules, dropout, generation and the
benchmark with device=cuda. Skipped where no GPU is present."""

import csv

import pytest
import torch

from helpers import TORCH_RNNS, flat_state
from rnnlab import benchmark as bench
from rnnlab.models import RNN, CharRNN, Dropout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("cell", list(TORCH_RNNS))
def test_cells_on_cuda_match_cudnn(cell, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ref = TORCH_RNNS[cell](16, 32, 2, batch_first=True).cuda()
    mine = RNN.from_torch(ref)
    assert mine.cells[0].Wxh.weight.is_cuda
    x = torch.randn(8, 12, 16, device="cuda")

    def run(module):
        xi = x.clone().requires_grad_()
        out, h_n = module(xi)
        loss = out.sum() + sum((s ** 2).sum() for s in flat_state(h_n))
        grads = torch.autograd.grad(loss, [xi, *module.parameters()])
        return [out, *flat_state(h_n), grads[0]], dict(zip(module.parameters(), grads[1:]))

    ours, our_grads = run(mine)
    theirs, their_grads = run(ref)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for mine_p, ref_p in mine.weight_pairs(ref):
        torch.testing.assert_close(our_grads[mine_p], their_grads[ref_p], atol=1e-4, rtol=1e-4)


def test_dropout_and_generation_on_cuda():
    torch.manual_seed(1)
    y = Dropout(0.3)(torch.ones(100_000, device="cuda"))
    assert abs((y != 0).float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    lm = CharRNN(12, 8, 16, num_layers=2, cell="lstm").cuda().eval()
    prompt = torch.randint(0, 12, (2, 3), device="cuda")
    out = lm.generate(prompt, 10, generator=torch.Generator("cuda").manual_seed(0))
    assert out.shape == (2, 13) and out.is_cuda and torch.equal(out[:, :3], prompt)


def test_benchmark_runs_on_cuda(tmp_path):
    from test_bench import run

    run(tmp_path, shapes=[bench.Shape("tiny", B=4, T=5, D=3, H=8, L=2)], rows=["forward", "backward", "memory"],
        reps=2, warmup=1, device="cuda", out=tmp_path)
    with (tmp_path / "benchmark.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all(r["device"].startswith("cuda") and float(r["ratio"]) > 0 for r in rows)


@pytest.mark.parametrize("cell", list(TORCH_RNNS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
def test_cells_train_under_cuda_autocast_close_to_float32(cell, dtype, varlen):
    """trainer.precision=16-mixed / bf16-mixed on a GPU: the recurrences run in autocast's dtype
    and stay within its precision of float32 (the CPU bf16 test in test_fast_paths, on CUDA)."""
    torch.manual_seed(0)
    rnn = RNN(32, 64, 2, cell=cell).cuda()
    x = torch.randn(8, 24, 32, device="cuda")
    lengths = torch.randint(1, 25, (8,)) if varlen else None

    def run(enabled):
        rnn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype, enabled=enabled):
            out, h_n = rnn(xi, lengths=lengths)
            loss = (out.float() * torch.linspace(-1, 1, 64, device="cuda")).sum() + sum(
                (s.float() ** 2).sum() for s in flat_state(h_n))
        loss.backward()
        return [out, *flat_state(h_n), xi.grad, *(p.grad for p in rnn.parameters())]

    reference, mixed = run(False), run(True)
    for i, (got, want) in enumerate(zip(mixed, reference)):
        error = ((got.float() - want).norm() / want.norm()).item()
        assert error < 0.1, f"{cell} {dtype}: tensor {i} differs from float32 by {error:.1%}"
