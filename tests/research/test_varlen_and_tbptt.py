"""Variable-length batches through data, tasks and training; stateful truncated BPTT."""

import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.data import CharDataModule, SyntheticSequenceDataModule, TaggingDataModule
from rnnlab.data.chars import StreamWindows
from rnnlab.models import SequenceTagger
from rnnlab.tasks import PAD_TAG, TaggingTask
from rnnlab.tasks.language_model import detach_state
from rnnlab.train import train


def test_variable_length_batches_are_padded_cut_and_carry_lengths():
    dm = SyntheticSequenceDataModule(num_train=200, num_val=50, num_test=50, seq_len=40, min_len=5, batch_size=16)
    dm.setup()
    x_all, y_all, lengths_all = dm.splits["train"].tensors
    assert lengths_all.min() >= 5 and lengths_all.max() <= 40 and len(set(lengths_all.tolist())) > 10
    valid = torch.arange(40)[None, :] < lengths_all[:, None]
    assert (x_all[~valid] == 0).all()
    assert torch.equal(y_all, (x_all.sum((1, 2)) > 0).long())
    x, y, lengths = next(iter(dm.val_dataloader()))
    assert x.shape[1] == int(lengths.max()) and y.shape == lengths.shape == (16,)

    tags_dm = TaggingDataModule(num_train=100, num_val=20, num_test=20, seq_len=12, min_len=3, batch_size=8)
    tags_dm.setup()
    x, tags, lengths = tags_dm.splits["train"].tensors
    for i in range(20):
        n = int(lengths[i])
        assert (tags[i, n:] == PAD_TAG).all() and (tags[i, :n] >= 0).all()
        symbols = x[i, :n].argmax(-1)
        assert int(tags[i, n - 1]) == 4 * (int(symbols[n - 2]) if n > 1 else 0) + 0  # the last step reads 0 next


def test_tagging_loss_ignores_padding():
    torch.manual_seed(0)
    net = {"_target_": "rnnlab.models.SequenceTagger", "input_size": 4, "hidden_size": 8, "num_tags": 16}
    task = TaggingTask(net, {"_target_": "torch.optim.Adam", "_partial_": True}).eval()  # no dropout
    x, lengths = torch.randn(3, 6, 4), torch.tensor([6, 2, 4])
    tags = torch.randint(0, 16, (3, 6))
    tags[1, 2:] = PAD_TAG
    tags[2, 4:] = PAD_TAG
    loss, _, _, weight = task.loss_and_outputs((x, tags, lengths), "val")
    logits = task.net(x, lengths=lengths)
    per_step = [torch.nn.functional.cross_entropy(logits[b, t:t + 1], tags[b, t:t + 1])
                for b in range(3) for t in range(int(lengths[b]))]
    assert int(weight) == 12
    torch.testing.assert_close(loss, torch.stack(per_step).mean())
    assert isinstance(task.net, SequenceTagger)


def test_training_on_variable_length_data(tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "data.min_len=5", "data.seq_len=30",
                                   "data.num_train=3000", "trainer.max_epochs=3", "model.net.cell=gru"], tmp_path)
    metrics, _ = train(cfg)
    assert metrics["test/acc"] > 0.75


def test_streams_continue_row_by_row():
    ids = torch.arange(1000)
    streams = StreamWindows(ids, batch_size=4, seq_len=10)
    assert len(streams) == (250 - 1) // 10
    x0, y0 = streams[0]
    x1, _ = streams[1]
    assert x0.shape == (4, 10) and torch.equal(y0, x0 + 1)
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b of batch 1 continues row b of batch 0
    assert torch.equal(x0[:, 0], torch.tensor([0, 250, 500, 750]))


def test_detach_state_keeps_values_and_cuts_the_graph():
    h = torch.randn(2, 3, 4, requires_grad=True) * 2
    c = torch.randn(2, 3, 4, requires_grad=True) * 2
    for state in (h, (h, c)):
        cut = detach_state(state)
        for a, b in zip(cut if isinstance(cut, tuple) else (cut,), state if isinstance(state, tuple) else (state,)):
            assert torch.equal(a, b) and not a.requires_grad and a.grad_fn is None


def test_stateful_training_carries_and_resets_the_state(tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn", "data.stateful=true", "data.batch_size=8",
                                   "model.net.hidden_size=32", "model.net.num_layers=1", "model.net.cell=lstm",
                                   "trainer.max_epochs=2"], tmp_path)
    metrics, _ = train(cfg)
    assert metrics["val/bpc"] < 4.0
    from rnnlab.checkpoints import load_task

    task, data = load_task(tmp_path / "checkpoints" / "last.ckpt")
    assert task.hparams.carry_state is True and data["stateful"] is True
    # The carried state follows the batches: feeding batch k with the state after batch k-1
    # is what the task does; after an epoch start it begins from zeros again.
    task.carried["train"] = "stale"
    task.on_train_epoch_start()
    assert "train" not in task.carried
    dm = CharDataModule(corpus_chars=20000, seq_len=32, batch_size=8, stateful=True)
    dm.setup()
    batches = list(dm.val_dataloader())
    task.on_validation_epoch_start()
    task.loss_and_outputs(batches[0], "val")
    after_first = task.carried["val"]
    _, h_direct = task.net(torch.cat([batches[0][0], batches[1][0]], dim=1))
    task.loss_and_outputs(batches[1], "val")
    for a, b in zip(task.carried["val"], h_direct):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # two windows = one long window
    assert after_first[0].grad_fn is None
