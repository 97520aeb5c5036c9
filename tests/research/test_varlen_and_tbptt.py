"""Variable-length batches through data, tasks and training; stateful truncated BPTT."""

import pytest
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
    # Every batch is cut to its own longest sequence, no shorter, no longer (all of them:
    # a batch cut to the split's longest, or one step short, would still train).
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        widths = []
        for x, y, lengths in loader:
            assert x.shape[1] == int(lengths.max()) and y.shape == lengths.shape == (x.shape[0],)
            widths.append(x.shape[1])
        assert len(set(widths)) > 1, widths  # the batches do differ

    tags_dm = TaggingDataModule(num_train=100, num_val=20, num_test=20, seq_len=12, min_len=3, batch_size=8)
    tags_dm.setup()
    for x_b, tags_b, lengths_b in tags_dm.val_dataloader():
        assert x_b.shape[1] == tags_b.shape[1] == int(lengths_b.max())
    x, tags, lengths = tags_dm.splits["train"].tensors
    for i in range(20):
        n = int(lengths[i])
        assert (tags[i, n:] == PAD_TAG).all() and (tags[i, :n] >= 0).all()
        symbols = x[i, :n].argmax(-1)
        assert int(tags[i, n - 1]) == 4 * (int(symbols[n - 2]) if n > 1 else 0) + 0  # the last step reads 0 next


@pytest.mark.parametrize("bidirectional", [False, True])
def test_tagging_loss_ignores_padding(bidirectional):
    torch.manual_seed(0)
    net = {"_target_": "rnnlab.models.SequenceTagger", "input_size": 4, "hidden_size": 8, "num_tags": 16,
           "bidirectional": bidirectional}
    task = TaggingTask(net, {"_target_": "torch.optim.Adam", "_partial_": True}).eval()  # no dropout
    x, lengths = torch.randn(3, 6, 4), torch.tensor([6, 2, 4])
    tags = torch.randint(0, 16, (3, 6))
    tags[1, 2:] = PAD_TAG
    tags[2, 4:] = PAD_TAG
    loss, _, _, weight = task.loss_and_outputs((x, tags, lengths), "val")
    alone = [task.net(x[b:b + 1, :int(lengths[b])])[0] for b in range(3)]  # each sentence without padding
    per_step = [torch.nn.functional.cross_entropy(alone[b][t:t + 1], tags[b, t:t + 1])
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
    assert len(streams) == 25  # 24 windows of 10 and one of 9: every character but the first a target
    x0, y0 = streams[0]
    last_x, last_y = streams[24]
    assert last_x.shape == (4, 9) and torch.equal(last_y[:, -1], torch.tensor([249, 499, 749, 999]))
    targets = torch.cat([streams[k][1] for k in range(len(streams))], dim=1)  # (4, 249)
    assert torch.equal(targets, ids.view(4, 250)[:, 1:])
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


def _lm_task(carry_state: bool, vocab_size: int = 30):
    from rnnlab.tasks import LanguageModelTask

    torch.manual_seed(0)
    net = {"_target_": "rnnlab.models.CharRNN", "vocab_size": vocab_size, "embed_dim": 8, "hidden_size": 16,
           "num_layers": 1, "dropout": 0.0, "cell": "gru"}
    return LanguageModelTask(net, {"_target_": "torch.optim.Adam", "_partial_": True}, carry_state=carry_state)


def test_truncated_bptt_carries_the_state_between_training_batches():
    """In training, batch k starts from the (detached) state batch k - 1 ended in: its loss is
    the loss of the two windows read as one long window, not of batch k from zeros."""
    task = _lm_task(carry_state=True)
    x = torch.randint(0, 30, (4, 20))
    first, second = (x[:, :10], x[:, 1:11]), (x[:, 10:], torch.roll(x, -1, 1)[:, 10:])
    loss_from_zeros = task.loss_and_outputs(second, "train")[0]
    task.on_train_epoch_start()
    task.loss_and_outputs(first, "train")
    carried_loss = task.loss_and_outputs(second, "train")[0]
    logits, _ = task.net(x)
    as_one_window = torch.nn.functional.cross_entropy(logits[:, 10:].flatten(0, 1), second[1].flatten())
    torch.testing.assert_close(carried_loss, as_one_window)
    assert not torch.allclose(carried_loss, loss_from_zeros)
    assert task.carried["train"].grad_fn is None  # the graph stops at the window boundary
    # Without carry_state every batch starts from zeros.
    plain = _lm_task(carry_state=False)
    plain.loss_and_outputs(first, "train")
    torch.testing.assert_close(plain.loss_and_outputs(second, "train")[0], loss_from_zeros)


def test_every_validation_and_test_epoch_starts_from_a_fresh_state(tmp_path):
    """Two validation (and test) passes of a stateful model give the same loss: each epoch
    of each stage starts its streams from zeros, not from the previous pass's last state."""
    import lightning as L

    dm = CharDataModule(corpus_chars=20000, seq_len=16, batch_size=4, stateful=True)
    dm.setup()
    task = _lm_task(carry_state=True, vocab_size=dm.vocab_size)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    for stage in ("validate", "test"):
        first = getattr(trainer, stage)(task, datamodule=dm, verbose=False)[0]
        second = getattr(trainer, stage)(task, datamodule=dm, verbose=False)[0]
        key = "val/loss" if stage == "validate" else "test/loss"
        assert first[key] == second[key]
        # The state is carried within the pass: resetting at every batch gives another loss.
        task.hparams.carry_state = False
        assert getattr(trainer, stage)(task, datamodule=dm, verbose=False)[0][key] != first[key]
        task.hparams.carry_state = True


def test_tasks_pass_the_lengths_to_the_network():
    """A padded batch with lengths gives the loss and predictions of each sequence alone,
    unpadded: for a classifier (final state at each length) and a bidirectional tagger
    (whose backward half would otherwise read the padding first)."""
    from rnnlab.tasks import ClassificationTask

    torch.manual_seed(0)
    opt = {"_target_": "torch.optim.Adam", "_partial_": True}
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(3, 7, 4) * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    classifier = ClassificationTask({"_target_": "rnnlab.models.SequenceClassifier", "input_size": 4,
                                     "hidden_size": 8, "num_classes": 3}, opt).eval()
    y = torch.tensor([0, 2, 1])
    loss, logits, _, _ = classifier.loss_and_outputs((x, y, lengths), "val")
    alone = torch.cat([classifier.net(x[b:b + 1, :int(lengths[b])]) for b in range(3)])
    torch.testing.assert_close(logits, alone)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(alone, y))

    tagger = TaggingTask({"_target_": "rnnlab.models.SequenceTagger", "input_size": 4, "hidden_size": 8,
                          "num_tags": 5, "bidirectional": True}, opt).eval()
    tags = torch.randint(0, 5, (3, 7)).masked_fill(torch.arange(7)[None, :] >= lengths[:, None], PAD_TAG)
    _, flat_logits, _, _ = tagger.loss_and_outputs((x, tags, lengths), "val")
    for b in range(3):
        n = int(lengths[b])
        torch.testing.assert_close(flat_logits.view(3, 7, 5)[b, :n], tagger.net(x[b:b + 1, :n])[0])


def test_tagger_metrics_count_only_the_valid_steps_of_a_padded_batch():
    torch.manual_seed(0)
    task = TaggingTask({"_target_": "rnnlab.models.SequenceTagger", "input_size": 4, "hidden_size": 8,
                        "num_tags": 6}, {"_target_": "torch.optim.Adam", "_partial_": True}).eval()
    lengths = torch.tensor([9, 2, 5, 1])
    x = torch.randn(4, 9, 4)
    tags = torch.randint(0, 6, (4, 9)).masked_fill(torch.arange(9)[None, :] >= lengths[:, None], PAD_TAG)
    task._step((x, tags, lengths), "val")
    values = task.metrics["val_split"].compute()
    predictions = task.net(x, lengths=lengths).argmax(-1)
    valid = tags != PAD_TAG
    assert int(valid.sum()) == 17
    torch.testing.assert_close(values["val/acc"], (predictions[valid] == tags[valid]).float().mean())


def test_evaluation_reads_the_text_as_the_data_says_whichever_way_the_model_trained(tmp_path):
    """A model trained on independent windows is evaluated with its state carried through the
    test text (data.stateful=true), and a truncated-BPTT model on independent windows
    (data.stateful=false): the carried loss is the streams' loss written out independently,
    and differs from the windows' loss."""
    from helpers import carried_bpc
    from rnnlab.checkpoints import load_task
    from rnnlab.eval import evaluate

    for stateful in (False, True):
        run = tmp_path / f"stateful_{stateful}"
        cfg = compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn", f"data.stateful={stateful}",
                                       "data.batch_size=8", "model.net.hidden_size=24", "model.net.num_layers=1",
                                       "model.net.cell=gru", "trainer.max_epochs=1"], run)
        train(cfg)
        ckpt = run / "checkpoints" / "last.ckpt"
        results = {}
        for read_as in (False, True):
            results[read_as] = evaluate(compose_config(
                "eval", [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", f"data.stateful={read_as}"],
                run / f"eval_{read_as}"))["test/bpc"]
        task, data = load_task(ckpt)
        assert task.hparams.carry_state is stateful  # how it trained
        dm = CharDataModule(**{k: v for k, v in data.items() if k != "_target_"})
        dm.setup("test")
        assert results[True] == pytest.approx(carried_bpc(task.net.eval(), dm.ids["test"], 8, 32), abs=1e-4)
        assert results[False] != pytest.approx(results[True], abs=1e-3)
