"""What the hidden states do, and where the gradients vanish.

:func:`record` runs a task's network on a batch with every :class:`RNN` inside it switched
to the seed's step-by-step loop, keeping each step's state (L, B, H) and, after a backward
pass of the task's loss, the gradient of the loss with respect to that state. That
gradient is the total derivative ∂loss/∂h_t: it includes every path from h_t to the loss,
through the outputs above it and through all later steps, so its norm over t is the
classic picture of vanishing or exploding gradients.

The figures: a heatmap of hidden activations (units × time) per layer for one example,
the gradient-norm curves per layer, the fraction of saturated units (|h| > 0.99) per
layer, and a 2-D PCA of the top layer's state trajectories coloured by class. They are
logged to TensorBoard by :class:`rnnlab.callbacks.HiddenStateMonitor` and written as PNG
files by :func:`analyze` (``scripts/analyze.py``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from .models import RNN

log = logging.getLogger(__name__)
SATURATION = 0.99


@dataclass
class Recording:
    """One RNN stack's states and gradients over a batch.

    states: (L, B, T, H) hidden states, detached.
    grad_norms: (L, T) mean over the batch of ||∂loss/∂h_t|| for each layer and step.
    """

    name: str
    states: torch.Tensor
    grad_norms: torch.Tensor

    def saturation(self) -> torch.Tensor:
        """(L,) fraction of |h| > 0.99 over batch, time and units."""
        return (self.states.abs() > SATURATION).float().mean(dim=(1, 2, 3))

    def cpu(self) -> "Recording":
        return Recording(self.name, self.states.cpu(), self.grad_norms.cpu())


@contextmanager
def _stepwise(net: torch.nn.Module):
    """Run every RNN inside ``net`` through its step loop (``RNN.forward_stepwise``), keeping
    each layer's state at each step. The kept tensor is the one passed both up to the next
    layer and on to the next step, so its gradient is the total derivative ∂loss/∂h_t."""
    kept: dict[str, list[list[torch.Tensor]]] = {}  # name -> [step][layer] -> (B, H)
    originals = {}

    def make_forward(name: str, rnn: RNN):
        def forward(x, h0=None, lengths=None):
            if lengths is not None:
                raise ValueError("hidden-state analysis needs full-length sequences, got lengths")
            outputs, h_n, states = rnn.forward_stepwise(x, h0, return_states=True)
            for step in states:
                for layer_state in step:
                    layer_state[0].retain_grad()  # h_t of this layer, (B, H)
            kept.setdefault(name, []).extend([layer_state[0] for layer_state in step] for step in states)
            return outputs, h_n

        return forward

    for name, module in net.named_modules():
        if isinstance(module, RNN):
            originals[name] = module.forward
            module.forward = make_forward(name or "rnn", module)
    try:
        yield kept
    finally:
        for name, module in net.named_modules():
            if name in originals:
                module.forward = originals[name]


def record(task: L.LightningModule, batch) -> list[Recording]:
    """States and ∂loss/∂h_t of every RNN stack in ``task.net`` for one batch (eval mode)."""
    was_training = task.training
    carried = getattr(task, "carried", {})  # a language model's truncated-BPTT states
    carried.pop("analysis", None)  # analyse from zero states, not from a previous call's
    task.eval()
    task.zero_grad(set_to_none=True)
    with torch.enable_grad(), _stepwise(task.net) as kept:
        loss = task.loss_and_outputs(batch, "analysis")[0]
        loss.backward()
    carried.pop("analysis", None)
    task.zero_grad(set_to_none=True)
    task.train(was_training)
    recordings = []
    for name, steps in kept.items():
        states = torch.stack([torch.stack([h.detach() for h in step]) for step in steps], dim=2)  # (L, B, T, H)
        grads = torch.stack([torch.stack([h.grad if h.grad is not None else torch.zeros_like(h) for h in step])
                             for step in steps], dim=2)  # (L, B, T, H)
        recordings.append(Recording(name, states, grads.norm(dim=-1).mean(dim=1)))  # (L, T)
    return recordings


# ------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap_figure(rec: Recording, example: int = 0):
    """Hidden activations, units × time, one panel per layer, for one example."""
    plt = _plt()
    layers = rec.states.shape[0]
    fig, axes = plt.subplots(layers, 1, figsize=(8, 2.2 * layers + 0.6), squeeze=False, layout="constrained")
    for layer, ax in enumerate(axes[:, 0]):
        image = ax.imshow(rec.states[layer, example].T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                          interpolation="nearest")
        ax.set_ylabel(f"layer {layer}\nunit")
        fig.colorbar(image, ax=ax, fraction=0.025)
    axes[-1, 0].set_xlabel("time step t")
    fig.suptitle(f"{rec.name}: hidden activations of example {example}")
    return fig


def gradient_flow_figure(recordings: list[Recording], labels: list[str] | None = None, name_layers: bool = True):
    """||∂loss/∂h_t|| against t, one line per layer (and per recording), log scale; each
    line labelled "<label> layer <l>", or "<label>" alone without ``name_layers``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for i, rec in enumerate(recordings):
        label = labels[i] if labels else rec.name
        for layer, norms in enumerate(rec.grad_norms):
            ax.plot(range(len(norms)), norms.clamp_min(1e-30).numpy(), marker=".",
                    label=f"{label} layer {layer}" if name_layers else label)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("mean ||∂loss/∂h_t||")
    ax.set_title("gradient flow over time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def saturation_figure(rec: Recording):
    """Fraction of units with |h| > 0.99, per layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
    values = rec.saturation().numpy()
    ax.bar([f"layer {i}" for i in range(len(values))], values, color="tab:red")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"fraction |h| > {SATURATION}")
    ax.set_title(f"{rec.name}: saturated units")
    return fig


def pca_figure(rec: Recording, labels: torch.Tensor | None):
    """Top-layer state trajectories of each example projected on their first two principal components."""
    plt = _plt()
    top = rec.states[-1]  # (B, T, H)
    flat = top.reshape(-1, top.shape[-1])  # (B*T, H)
    mean = flat.mean(dim=0)
    _, _, v = torch.pca_lowrank(flat - mean, q=min(2, *flat.shape), center=False)
    points = ((top - mean) @ v[:, :2])  # (B, T, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for b in range(points.shape[0]):
        label = int(labels[b]) if labels is not None and labels.dim() == 1 else 0
        ax.plot(points[b, :, 0], points[b, :, 1] if points.shape[-1] > 1 else 0 * points[b, :, 0],
                color=colours(label % 10), alpha=0.6, linewidth=1)
        ax.scatter(points[b, -1, 0], points[b, -1, 1] if points.shape[-1] > 1 else 0, color=colours(label % 10),
                   s=18, zorder=3)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("hidden-state trajectories (dot: final state; colour: class)")
    return fig


def analyze(task: L.LightningModule, batch, out_dir: str | Path) -> list[Path]:
    """Write the analysis figures for ``batch`` as PNG files into ``out_dir``; return their paths."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = [r.cpu() for r in record(task, batch)]
    labels = batch[1].cpu() if batch[1].dim() == 1 else None
    figures = {"gradient_flow.png": gradient_flow_figure(recordings)}
    for rec in recordings:
        stem = rec.name.replace(".", "_")
        figures[f"{stem}_hidden_states.png"] = heatmap_figure(rec)
        figures[f"{stem}_saturation.png"] = saturation_figure(rec)
        figures[f"{stem}_pca.png"] = pca_figure(rec, labels)
    paths = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def first_batch(data_config: dict, num_examples: int, split: str = "val", task=None):
    """The first ``num_examples`` examples of a split of the data described by ``data_config``
    (read as in training: with what the data module learnt then, kept in ``task``'s checkpoint)."""
    from hydra.utils import instantiate

    from .checkpoints import restore_data_state

    overrides = {"batch_size": num_examples}
    datamodule = instantiate({**data_config, **overrides})
    if task is not None:
        restore_data_state(datamodule, task)
    datamodule.setup("validate")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    batch = next(iter(loader))
    return batch[:2]  # analysed as full-length sequences


def analyze_checkpoint(ckpt_path: str | Path, num_examples: int = 32, out_dir: str | Path | None = None) -> list[Path]:
    """Rebuild a trained task and its data from a checkpoint and write the figures.

    ``out_dir`` defaults to ``analysis/`` beside the checkpoint's ``checkpoints/`` folder.
    """
    from .checkpoints import CheckpointError, load_task

    task, data_config = load_task(ckpt_path)
    if data_config is None:
        raise CheckpointError(f"{str(ckpt_path)!r} holds no data config; it was not written by rnnlab.train")
    out_dir = Path(out_dir) if out_dir else Path(ckpt_path).resolve().parent.parent / "analysis"
    paths = analyze(task, first_batch(data_config, num_examples, task=task), out_dir)
    log.info("Analysis figures:\n" + "\n".join(f"  {p}" for p in paths))
    return paths
