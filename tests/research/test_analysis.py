"""Hidden-state and gradient-flow analysis: numbers against autograd, figures, the vanishing trend."""

import pytest
import subprocess
import sys

import torch
from torch import nn

from helpers import QUIET, ROOT, TINY, compose_config
from rnnlab.analyze import analyze, record
from rnnlab.tasks import ClassificationTask
from rnnlab.train import train

PNG = b"\x89PNG\r\n\x1a\n"


def _task(cell="rnn_tanh", hidden=6, layers=2):
    net = {"_target_": "rnnlab.models.SequenceClassifier", "input_size": 3, "hidden_size": hidden,
           "num_classes": 2, "num_layers": layers, "dropout": 0.0, "cell": cell}
    return ClassificationTask(net, {"_target_": "torch.optim.Adam", "_partial_": True}).double()


def _direct_grad_norms(task, x, y):
    """||∂loss/∂h_t|| by hand: perturbation variables added to every state of a plain step loop."""
    rnn = task.net.rnn
    B, T, _ = x.shape
    deltas = torch.zeros(rnn.num_layers, T, B, rnn.hidden_size, dtype=x.dtype, requires_grad=True)
    h = [torch.zeros(B, rnn.hidden_size, dtype=x.dtype) for _ in range(rnn.num_layers)]
    c = [torch.zeros_like(h[0]) for _ in h]
    for t in range(T):
        inp = x[:, t]
        for layer, cell in enumerate(rnn.cells):
            if rnn.is_lstm:
                h[layer], c[layer] = cell(inp, (h[layer], c[layer]))
            else:
                h[layer] = cell(inp, h[layer])
            h[layer] = h[layer] + deltas[layer, t]  # d loss / d delta = d loss / d h_t
            inp = h[layer]
    loss = nn.functional.cross_entropy(task.net.fc(h[-1]), y)
    (grad,) = torch.autograd.grad(loss, deltas)
    return grad.norm(dim=-1).mean(dim=-1)  # (L, T)


def test_gradient_flow_equals_direct_autograd():
    torch.manual_seed(0)
    for cell in ("rnn_tanh", "lstm"):
        task = _task(cell)
        x, y = torch.randn(4, 7, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
        (rec,) = record(task, (x, y))
        torch.testing.assert_close(rec.grad_norms, _direct_grad_norms(task, x, y), atol=1e-12, rtol=1e-9)
        assert rec.states.shape == (2, 4, 7, 6)
        _, h_n = task.net.rnn(x)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n
        torch.testing.assert_close(rec.states[:, :, -1], h_n, atol=1e-12, rtol=0)


def test_vanilla_rnn_gradients_vanish_toward_early_steps():
    torch.manual_seed(1)
    task = _task("rnn_tanh", hidden=16, layers=1)
    with torch.no_grad():  # a contracting recurrence: spectral norm 0.6
        q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
        task.net.rnn.cells[0].Whh.weight.copy_(0.6 * q)
    x, y = torch.randn(8, 40, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    norms = record(task, (x, y))[0].grad_norms[0]  # (T,): the loss reads only the final state
    assert norms[0] < 1e-6 * norms[-1]
    ratios = norms[1:] / norms[:-1]
    assert (ratios > 1).float().mean() > 0.9  # growing toward the end, step after step


def test_figures_are_written_as_png(tmp_path):
    torch.manual_seed(2)
    task = _task("gru")
    x, y = torch.randn(6, 9, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    paths = analyze(task, (x, y), tmp_path)
    assert {p.name for p in paths} == {"gradient_flow.png", "rnn_hidden_states.png", "rnn_saturation.png", "rnn_pca.png"}
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000


@pytest.mark.subprocess
def test_analyze_script_and_tensorboard_images(tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "trainer.max_epochs=1",
                                   "callbacks.hidden_state_monitor.num_examples=4"], tmp_path)
    train(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"analysis/gradient_flow", "analysis/rnn/hidden_states", "analysis/rnn/saturation"} <= images
    proc = subprocess.run([sys.executable, "scripts/analyze.py", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
                           "num_examples=8", f"hydra.run.dir={tmp_path / 'analyze_run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "analysis" / "rnn_pca.png").read_bytes()[:8] == PNG
    assert str(tmp_path / "analysis" / "gradient_flow.png") in proc.stdout + proc.stderr


def test_pca_trajectories_are_coloured_by_class():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from rnnlab.analyze import Recording, pca_figure

    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 1, 0, 2])
    rec = Recording("rnn", torch.randn(2, 5, 7, 6), torch.ones(2, 7))
    fig = pca_figure(rec, labels)
    lines = fig.axes[0].lines
    assert len(lines) == 5
    colours = plt.get_cmap("tab10")
    for line, label in zip(lines, labels.tolist()):
        assert to_rgba(line.get_color()) == to_rgba(colours(label))
    plt.close(fig)
