"""Short real training runs: learning, eval/generate from checkpoints, resume, TensorBoard files."""

import math
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import QUIET, ROOT, TINY, compose_config
from rnnlab.checkpoints import load_checkpoint
from rnnlab.eval import evaluate
from rnnlab.train import train


def run(tmp_path, *overrides, data="synthetic"):
    cfg = compose_config("train", [*QUIET, *TINY[data], *overrides], tmp_path)
    metrics, value = train(cfg)
    return cfg, metrics, value


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    cfg, metrics, value = run(out, "model=classifier", "data.num_train=4000", "data.num_test=1000",
                              "trainer.max_epochs=4", "trainer.log_every_n_steps=5",
                              "callbacks.parameter_histograms.every_n_steps=10")
    return out, cfg, metrics, value


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("char")
    cfg, metrics, value = run(out, "model=char_rnn", "model.net.hidden_size=128", "model.net.num_layers=2",
                              "data.corpus_chars=60000", "data.windows_per_epoch=1024",
                              "trainer.max_epochs=3", "model.sample_max_new_tokens=80", data="chars")
    return out, cfg, metrics, value


def test_classifier_learns_well_above_chance(classifier_run):
    _, cfg, metrics, value = classifier_run
    assert metrics["test/acc"] > 0.85
    assert value == metrics["val/acc_best"] == max(value, metrics["val/acc"])
    assert cfg.optimized_metric == "val/acc_best"


def test_bidirectional_tagger_beats_unidirectional(tmp_path):
    common = ("data.num_train=2000", "trainer.max_epochs=4")
    _, uni, _ = run(tmp_path / "uni", "model=tagger", *common, data="tagging")
    _, bi, _ = run(tmp_path / "bi", "model=birnn_tagger", *common, data="tagging")
    # A causal tagger cannot beat 1/K + (1 - 1/K)/T = 0.2875 (K=4, T=20) in expectation.
    assert uni["test/acc"] < 0.33
    assert bi["test/acc"] > 0.9
    assert bi["test/acc"] - uni["test/acc"] > 0.5


def test_char_lm_bits_per_character_fall_far_below_uniform(char_run):
    out, _, metrics, value = char_run
    vocab_size = len(load_checkpoint(next((out / "checkpoints").glob("last.ckpt")))["hyper_parameters"]["vocab"])
    assert value == metrics["val/bpc_best"]
    assert metrics["val/bpc"] < math.log2(vocab_size) - 2.5  # uniform: log2(V) ~ 5.6 bits
    assert metrics["test/ppl"] == pytest.approx(2 ** metrics["test/bpc"], rel=1e-4)


@pytest.mark.subprocess
def test_generate_script_prints_requested_length_in_corpus_alphabet(char_run):
    out = char_run[0]
    ckpt = out / "checkpoints" / "last.ckpt"
    vocab = load_checkpoint(ckpt)["hyper_parameters"]["vocab"]
    cmd = [sys.executable, "scripts/generate.py", f"ckpt_path={ckpt}", "prompt=KING:", "max_new_tokens=120",
           "temperature=0.8", "seed=3", f"hydra.run.dir={out}/generate"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    text = first.stdout.rstrip("\n")
    assert text.startswith("KING:") and len(text) >= 125 - text.count("\n") * 0  # prompt + 120 characters
    assert len(first.stdout) - 1 == len("KING:") + 120  # print adds one newline
    assert set(text) <= set(vocab)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.stdout == first.stdout  # same seed, same text


def test_eval_reproduces_the_test_metrics(classifier_run, tmp_path):
    out, _, metrics, _ = classifier_run
    best = next(p for p in (out / "checkpoints").glob("epoch_*.ckpt"))
    cfg = compose_config("eval", [f"ckpt_path={best}", "trainer.accelerator=cpu",
                                  "trainer.enable_progress_bar=false"], tmp_path)
    again = evaluate(cfg)
    for key in ("test/acc", "test/loss", "test/f1"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_resume_from_last_checkpoint_continues_at_the_right_epoch(classifier_run, tmp_path):
    out, _, metrics, _ = classifier_run
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    steps_per_epoch = last["global_step"] // 4
    assert last["epoch"] == 3  # epochs 0..3 done
    _, resumed, _ = run(tmp_path, "model=classifier", "data.num_train=4000", "data.num_test=1000",
                        "trainer.max_epochs=6", "model.scheduler.T_max=4",  # the schedule the run had
                        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    after = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 5 and after["global_step"] == 6 * steps_per_epoch
    # Only the two new epochs ran: one validation point each in the resumed run's logs.
    assert len(_events(tmp_path / "tensorboard").Scalars("val/acc")) == 2


def _events(directory):
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_files_hold_scalars_hparams_and_histograms(classifier_run):
    out, _, metrics, _ = classifier_run
    events = _events(out / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/loss_epoch", "val/loss", "val/acc", "val/acc_best", "val/f1",
                "test/loss", "test/acc", "lr-Adam", "grad_2.0_norm_total", "grad_2.0_norm/rnn.cells.0.Whh.weight"):
        assert tag in scalars, tag
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])
    assert len(events.Scalars("val/acc")) == 4  # one point per epoch
    # The batch loss at every 5th optimizer step (log_every_n_steps=5) of 4 x 63 steps.
    assert [e.step for e in events.Scalars("train/loss")] == list(range(4, 4 * 63, 5))
    histograms = set(events.Tags()["histograms"])
    assert {"weights/rnn.cells.0.Wxh.weight", "grads/rnn.cells.1.Whh.weight", "weights/fc.bias"} <= histograms
    # 64 equal-width buckets (ParameterHistograms' default) over the 64 x 64 values of W_hh;
    # TensorBoard's format keeps the non-empty range plus one empty bucket on the left.
    hist = events.Histograms("weights/rnn.cells.1.Whh.weight")[-1].histogram_value
    assert hist.num == 64 * 64 and sum(hist.bucket) == 64 * 64
    assert 2 <= len(hist.bucket) <= 65 and hist.bucket_limit[-1] == pytest.approx(hist.max)
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    logged = start.session_start_info.hparams
    assert logged["model.net.hidden_size"].number_value == 64
    assert "data.num_train=4000" in logged["overrides"].string_value
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/acc_best", "test/acc"}


def test_tensorboard_files_hold_generated_text_samples(char_run):
    out = char_run[0]
    events = _events(out / "tensorboard")
    assert "samples/val/text_summary" in events.Tags()["tensors"]
    samples = events.Tensors("samples/val/text_summary")
    assert len(samples) == 3  # one per validation epoch, after the sanity check
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("    ") and len(text.replace("\n    ", "\n")) >= 80
    assert "\n" in text and all(line.startswith("    ") for line in text.split("\n"))  # a Markdown code block
    steps_per_epoch = char_run[1].data.windows_per_epoch // char_run[1].data.batch_size
    assert [s.step for s in samples] == [steps_per_epoch * epoch for epoch in (1, 2, 3)]  # optimizer steps done
    assert {"train/bpc", "val/bpc", "val/ppl", "val/bpc_best", "test/bpc"} <= set(events.Tags()["scalars"])


def test_checkpoint_alone_rebuilds_the_model(char_run):
    from rnnlab.checkpoints import load_task

    out = char_run[0]
    task, data_config = load_task(out / "checkpoints" / "last.ckpt")
    assert data_config["_target_"] == "rnnlab.data.CharDataModule"
    assert task.net.vocab_size == len(task.vocab)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in task.state_dict().items():
        assert torch.equal(tensor, state[name])


class _FakeLibc:
    """glibc's mallopt, recording its calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_heap_reuse_sets_both_glibc_thresholds_before_anything_else(tmp_path, monkeypatch):
    """heap_reuse_mb sets mallopt's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to that many
    megabytes, first thing in train(); null sets nothing; bad values are refused by key."""
    import rnnlab.train as train_module

    libc = _FakeLibc()
    monkeypatch.setattr(train_module.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(train_module.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(train_module.platform, "system", lambda: "Linux")
    assert train_module.reuse_heap(256)
    assert libc.calls == [(train_module.M_MMAP_THRESHOLD, 256 << 20), (train_module.M_TRIM_THRESHOLD, 256 << 20)]
    libc.calls.clear()
    assert not train_module.reuse_heap(None) and libc.calls == []
    for bad in (0, -5, 1.5, "big", True):
        with pytest.raises(ValueError, match=r"heap_reuse_mb: expected an int >= 1 \(megabytes\) or null"):
            train_module.reuse_heap(bad)
    monkeypatch.setattr(train_module.platform, "libc_ver", lambda: ("", ""))  # musl, macOS: nothing to set
    assert not train_module.reuse_heap(256) and libc.calls == []

    seen = []

    def stop(megabytes):
        seen.append(megabytes)
        raise KeyboardInterrupt  # nothing of the run is needed past this call

    monkeypatch.setattr(train_module, "reuse_heap", stop)
    with pytest.raises(KeyboardInterrupt):
        train(compose_config("train", [*QUIET, *TINY["synthetic"], "heap_reuse_mb=64"], tmp_path))
    assert seen == [64]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_heap_reuse_is_accepted_by_this_machines_glibc():
    import platform

    from rnnlab.train import reuse_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert reuse_heap(256)
