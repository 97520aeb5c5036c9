"""callbacks=[default,ema]: Lightning's EMAWeightAveraging keeps an exponential moving average
of the weights; validation, the checkpoints' weights and the final test read the average, the
trained weights are kept beside it, and a resumed run goes on with both."""

import csv

import pytest
import torch

from conftest import tiny_train
from rnnlab.checkpoints import load_checkpoint, load_task
from rnnlab.eval import load_for_evaluation

# 512 training sequences in batches of 64: 8 optimizer steps an epoch.
DECAY = 0.6
RUN = ["model=classifier", "model.net.hidden_size=8", "model.optimizer.lr=0.05", "callbacks=[default,ema]",
       f"callbacks.ema.decay={DECAY}", "callbacks.hidden_state_monitor=null", "callbacks.parameter_histograms=null",
       "callbacks.model_checkpoint.save_top_k=-1",  # epoch_000.ckpt, epoch_001.ckpt, ...
       "logger=csv"]


def probe(out_file) -> list[str]:
    return ["+callbacks.weights._target_=probes.RecordWeights", f"+callbacks.weights.out_file={out_file}"]


def metrics_of(run) -> list[float]:
    """The val/acc logged at each epoch's end, in order."""
    with open(run / "csv" / "metrics.csv") as f:
        return [float(row["val/acc"]) for row in csv.DictReader(f) if row.get("val/acc")]


def ema(steps: list[dict]) -> dict:
    """The average written out: the first step's weights, then decay * average + (1 - decay) * weights."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: DECAY * average[k] + (1 - DECAY) * weights[k] for k in average}
    return average


def assert_same(ours: dict, theirs: dict, prefix: str = "") -> None:
    """Equal tensors under every key (that starts with ``prefix``)."""
    keys = [k for k in ours if k.startswith(prefix)]
    assert keys and keys == [k for k in theirs if k.startswith(prefix)]
    for key in keys:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)


def mean_loss(checkpoint_path, split: str = "val", state: str = "state_dict") -> float:
    """The ``split``'s mean loss with the checkpoint's weights (``state``), computed here on the
    data module rebuilt from the checkpoint."""
    task, data = load_for_evaluation(str(checkpoint_path), stage="fit" if split == "val" else "test")
    task.load_state_dict(load_checkpoint(checkpoint_path)[state])
    task.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y, *_ in getattr(data, f"{split}_dataloader")():
            total += float(torch.nn.functional.cross_entropy(task.net(x), y, reduction="sum"))
            count += len(y)
    return total / count


def test_checkpoints_hold_the_average_of_every_steps_weights_and_the_raw_weights_beside_it(tmp_path):
    run = tmp_path / "run"
    _, metrics = tiny_train(run, *RUN, "trainer.max_epochs=2", *probe(run / "weights.pt"))
    steps = torch.load(run / "weights.pt")
    assert len(steps) == 16
    for epoch, done in ((0, 8), (1, 16)):
        checkpoint = load_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.ckpt")
        assert checkpoint["global_step"] == done
        assert_same(checkpoint["state_dict"], ema(steps[:done]), "net.")
        assert_same(checkpoint["current_model_state"], steps[done - 1], "net.")
        # The best validation accuracy so far is the run's, in both (the average's own copy is stale).
        best = max(metrics_of(run)[: epoch + 1])
        for state in ("state_dict", "current_model_state"):
            assert float(checkpoint[state]["monitor_best.max_value"]) == pytest.approx(best)
    # The average is not the raw weights: the test would pass on no averaging otherwise.
    assert not torch.allclose(ema(steps)["net.fc.weight"], steps[-1]["net.fc.weight"], atol=1e-3)


def test_validation_the_final_test_and_a_loaded_checkpoint_read_the_average(tmp_path):
    run = tmp_path / "run"
    _, metrics = tiny_train(run, *RUN, "trainer.max_epochs=1")
    last = run / "checkpoints" / "last.ckpt"  # one epoch: also the best checkpoint, which the test reads
    for split in ("val", "test"):
        averaged, trained = mean_loss(last, split), mean_loss(last, split, "current_model_state")
        assert metrics[f"{split}/loss"] == pytest.approx(averaged, rel=1e-5), split
        assert abs(averaged - trained) > 1e-3
    task, _ = load_task(last)  # what eval, predict and generate load
    net_state = {k.removeprefix("net."): v for k, v in load_checkpoint(last)["state_dict"].items()
                 if k.startswith("net.")}
    assert_same(task.net.state_dict(), net_state)


def test_a_resumed_run_goes_on_with_the_average_and_the_raw_weights_of_an_uninterrupted_one(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    tiny_train(whole, *RUN, "trainer.max_epochs=3")
    tiny_train(resumed, *RUN, "trainer.max_epochs=3", f"ckpt_path={whole / 'checkpoints' / 'epoch_000.ckpt'}")
    ours, theirs = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (resumed, whole))
    assert ours["global_step"] == theirs["global_step"] == 24
    assert_same(ours["state_dict"], theirs["state_dict"])
    assert_same(ours["current_model_state"], theirs["current_model_state"])
    assert_same(ours["averaging_state"], theirs["averaging_state"])
