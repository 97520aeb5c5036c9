"""The new cells and the regularisers in training runs: each cell learns the seed task, the
task keeps IndRNN's recurrent weights within their bound, and a character model trains with
every regulariser on and reloads from its checkpoint."""

import pytest
import torch

from helpers import QUIET, TINY, compose_config, flat_state
from rnnlab.checkpoints import load_task
from rnnlab.train import train

MODERN = ["min_gru", "min_lstm", "indrnn", "ln_lstm"]


def test_training_keeps_indrnns_recurrent_weights_within_the_bound(tmp_path):
    """The task clips u after every optimiser step: a learning rate that pushes u far past
    the bound leaves it at the bound, not beyond."""
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "trainer.max_epochs=1", "model.net.cell=indrnn",
                                   "+model.net.cell_options.max_steps=20", "model.optimizer.lr=0.5"], tmp_path)
    train(cfg)
    task, _ = load_task(tmp_path / "checkpoints" / "last.ckpt")  # the weights after the last step
    u_max = 2.0 ** (1 / 20)
    us = torch.cat([cell.u.detach() for cell in task.net.rnn.cells])
    assert us.abs().max().item() <= u_max + 1e-6
    assert (us.abs() > u_max - 1e-6).any()  # the bound was reached: the clipping acted


@pytest.mark.slow  # four training runs, about 35 s; the cells' parity tests run by default
@pytest.mark.parametrize("name", MODERN)
def test_each_new_cell_learns_the_seed_task(name, tmp_path):
    """Four short epochs of the seed classification task: well above chance (0.5)."""
    cfg = compose_config("train", [*QUIET, "data.num_train=4000", "data.num_val=256", "data.num_test=512",
                                   "trainer.max_epochs=4", f"model.net.cell={name}",
                                   "+model.net.cell_options.max_steps=20" if name == "indrnn" else "seed=0"],
                         tmp_path)
    metrics, _ = train(cfg)
    assert metrics["test/acc"] > 0.8, metrics


def test_char_model_trains_with_every_regulariser_and_reloads(tmp_path):
    """All switches at once through the config: training runs, the checkpoint rebuilds the
    same model (tied weights included) and evaluation is deterministic."""
    from rnnlab.checkpoints import load_task

    cfg = compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn", "model.net.cell=lstm",
                                   "model.net.hidden_size=32", "model.net.embed_dim=32", "model.net.num_layers=2",
                                   "model.net.locked_dropout=true", "model.net.weight_drop=0.3",
                                   "model.net.zoneout=0.1", "model.net.embedding_dropout=0.1",
                                   "model.net.input_dropout=0.1", "model.net.tie_weights=true",
                                   "trainer.max_epochs=1"], tmp_path)
    metrics, task = train(cfg)
    assert metrics["test/bpc"] < 6.5  # below a uniform guess over the characters (log2 V)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    loaded, _ = load_task(ckpt)
    assert loaded.net.fc.weight is loaded.net.embedding.weight
    idx = torch.randint(0, loaded.net.vocab_size, (2, 12))
    a, b = loaded.net(idx)[0], loaded.net(idx)[0]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(torch.isfinite(s).all() for s in flat_state(loaded.net(idx)[1]))
