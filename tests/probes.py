"""Callbacks that record what a run did, for tests that check a mechanism from outside the
process (``+callbacks.<name>._target_=probes.<Class>``; the subprocess needs ``tests`` on
PYTHONPATH)."""

import json
from pathlib import Path

import lightning as L
import torch


class RecordReads(L.Callback):
    """Save, for each rank, the inputs of every training batch it read, epoch by epoch:
    ``<out_dir>/rank<r>.pt`` holds a list with one (samples, features) tensor per epoch."""

    def __init__(self, out_dir: str):
        self.out_dir, self.epochs = Path(out_dir), []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs[-1].append(batch[0].detach().flatten(1).float().cpu())

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save([torch.cat(rows) for rows in self.epochs], self.out_dir / f"rank{trainer.global_rank}.pt")


class RecordLearningRates(L.Callback):
    """Record the learning rate each optimizer step is taken with: ``rates`` [(global step,
    lr of the first parameter group)], saved as JSON to ``out_file`` at the end of training."""

    def __init__(self, out_file: str):
        self.out_file, self.rates = Path(out_file), []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.rates.append((trainer.global_step, optimizer.param_groups[0]["lr"]))

    def on_train_end(self, trainer, pl_module):
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text(json.dumps(self.rates))


class RecordWeights(L.Callback):
    """Record the module's weights after every optimizer step (the raw weights: a weight
    average swaps its own in only around validation), saved as a list of state dicts to
    ``out_file`` at the end of training."""

    def __init__(self, out_file: str):
        self.out_file, self.steps = Path(out_file), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_end(self, trainer, pl_module):
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.steps, self.out_file)
