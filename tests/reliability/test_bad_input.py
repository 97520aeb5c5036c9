"""Bad values anywhere a user types them end the run before any training step, with one
message that names the config key, the bad value and what is allowed."""

import re

import pytest
import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.errors import ConfigError, report_errors
from rnnlab.models import CharRNN
from rnnlab.models.kernels.matmul import StepWeight
from rnnlab.generate import generate
from rnnlab.tasks.base import RNNTask
from rnnlab.train import train

# (overrides, data group, fragments the message must contain)
BAD_VALUES = {
    "zero_hidden_size": (["model.net.hidden_size=0"], "synthetic", ["model.net.hidden_size: expected hidden_size >= 1, got 0"]),
    "negative_hidden_size": (["model.net.hidden_size=-3"], "synthetic",
                             ["model.net.hidden_size: expected hidden_size >= 1, got -3"]),
    "fractional_layers": (["model.net.num_layers=1.5"], "synthetic",
                          ["model.net.num_layers: expected num_layers to be an int >= 1, got 1.5"]),
    "dropout_one": (["model.net.dropout=1.0"], "synthetic", ["model.net.dropout: expected dropout in [0, 1), got 1.0"]),
    "negative_dropout": (["model.net.dropout=-0.1"], "synthetic", ["model.net.dropout: expected dropout in [0, 1), got -0.1"]),
    "unknown_cell": (["model.net.cell=foo"], "synthetic",
                     ["model.net.cell: expected cell in ['gru', 'indrnn', 'ln_lstm', 'lstm', 'min_gru', 'min_lstm', 'rnn_relu', 'rnn_tanh'], got 'foo'"]),
    "batch_larger_than_dataset": (["data.batch_size=1000"], "synthetic",
                                  ["data.batch_size: expected batch_size <= num_train (512), got 1000"]),
    "empty_split": (["data.num_val=0"], "synthetic", ["data.num_val: expected num_val >= 1, got 0"]),
    "negative_learning_rate": (["model.optimizer.lr=-1"], "synthetic", ["model.optimizer: Invalid learning rate: -1"]),
    "negative_epochs": (["trainer.max_epochs=-2"], "synthetic",
                        ["trainer.max_epochs: expected -1 (no limit) or an int >= 1, or null, got -2"]),
    "zero_epochs": (["trainer.max_epochs=0"], "synthetic",
                    ["trainer.max_epochs: expected -1 (no limit) or an int >= 1, or null, got 0"]),
    "epochs_not_a_number": (["trainer.max_epochs=abc"], "synthetic",
                            ["trainer.max_epochs: expected -1 (no limit) or an int >= 1, or null, got 'abc'"]),
    "learning_rate_not_a_number": (["model.optimizer.lr=fast"], "synthetic",
                                   ["model.optimizer.lr: expected a number, got 'fast'"]),
    "unknown_optimizer_argument": (["+model.optimizer.momentum=0.9"], "synthetic",
                                   ["model.optimizer.momentum: expected an argument of Adam (params, lr, betas"]),
    "clip_not_a_number": (["trainer.gradient_clip_val=high"], "synthetic",
                          ["trainer.gradient_clip_val: expected a number >= 0 or null, got 'high'"]),
    "experiment_without_its_required_path": (["experiment=shakespeare"], "chars",
                                             ["data.path: expected the text file to train on, got no value; this "
                                              "config requires it: add data.path=<value> to the command"]),
    "seed_not_a_number": (["seed=abc"], "synthetic", ["seed: expected an int >= 0 or null, got 'abc'"]),
    "seq_len_longer_than_corpus": (["model=char_rnn", "data.seq_len=100000"], "chars",
                                   ["data.seq_len: the generated corpus (data.corpus_chars=20000) is too short for "
                                    "seq_len=100000", "fewer than one window of seq_len + 1 = 100001"]),
    "sample_temperature_zero": (["model=char_rnn", "model.sample_temperature=0"], "chars",
                                ["model.sample_temperature: expected a number > 0, got 0"]),
    "zero_histogram_bins": (["callbacks.parameter_histograms.bins=0"], "synthetic",
                            ["callbacks.parameter_histograms.bins: expected an int >= 1, got 0"]),
    "missing_checkpoint": (["ckpt_path=/nonexistent/last.ckpt"], "synthetic",
                           ["ckpt_path: expected a checkpoint file, got '/nonexistent/last.ckpt', "
                            "which does not exist"]),
}

# What each task trains on, and what the other data gives (one validation batch, read after setup).
CLASSIFY, TAG = "(x (B, T, D) float, y (B,) int64[, lengths (B,) int])", \
    "(x (B, T, D) float or ids (B, T) int64, tags (B, T) int64[, lengths (B,) int])"
FROM_SYNTHETIC = "((64, 20, 10) float32, (64,) int64) from data=synthetic (rnnlab.data.synthetic.SyntheticSequenceDataModule)'s"
FROM_CHARS = "((64, 128) int64, (64, 128) int64) from data=chars (rnnlab.data.chars.CharDataModule)'s"
MISMATCHES = {
    ("char_rnn", "synthetic"): "data: model=char_rnn (LanguageModelTask) trains on batches (ids (B, T) int64, next_ids "
                               f"(B, T) int64), got {FROM_SYNTHETIC} val_dataloader(): ids has 3 dimensions, not 2 (B, T)",
    ("classifier", "chars"): f"data: model=classifier (ClassificationTask) trains on batches {CLASSIFY}, got "
                             f"{FROM_CHARS} val_dataloader(): x has 2 dimensions, not 3 (B, T, D)",
    ("tagger", "synthetic"): f"data: model=tagger (TaggingTask) trains on batches {TAG}, got {FROM_SYNTHETIC} "
                             "val_dataloader(): tags has 1 dimension, not 2 (B, T)",
    # A language model's batches have the form of token-id tagging (tag each character with
    # the next one); what the character data cannot give is a tag set.
    ("birnn_tagger", "chars"): "model: net.num_tags is null and the data (rnnlab.data.chars.CharDataModule) does not "
                               "set it: its model_settings() returns only ['carry_state', 'net.vocab_size', 'vocab']; "
                               "return {'net.num_tags': ...} from model_settings(), or set model.net.num_tags=<value>",
    ("classifier", "tagging"): f"data: model=classifier (ClassificationTask) trains on batches {CLASSIFY}, got "
                               "((64, 20, 4) float32, (64, 20) int64) from data=tagging "
                               "(rnnlab.data.tagging.TaggingDataModule)'s val_dataloader(): y has 2 dimensions, not 1 (B,)",
}


@pytest.fixture
def training_steps(monkeypatch):
    """Count training steps, to prove that a refused run never trained."""
    calls = []
    original = RNNTask.training_step

    def counted(self, batch, batch_idx):
        calls.append(batch_idx)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(RNNTask, "training_step", counted)
    return calls


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_is_refused_before_training_with_key_value_and_what_is_allowed(case, tmp_path, training_steps):
    overrides, data, fragments = BAD_VALUES[case]
    cfg = compose_config("train", [*QUIET, *TINY[data], *overrides], tmp_path)
    with pytest.raises(ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)):
        train(cfg)
    assert training_steps == []
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("model,data", sorted(MISMATCHES))
def test_model_and_data_that_do_not_go_together_are_refused(model, data, tmp_path, training_steps):
    # The data group's tiny overrides would not apply to the other data, so use its defaults.
    cfg = compose_config("train", [*QUIET, f"model={model}", f"data={data}"], tmp_path)
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert str(raised.value) == MISMATCHES[(model, data)]
    assert training_steps == []


@pytest.mark.parametrize("args,last_line", [
    (["model.net.hidden_size=0"], "Error: model.net.hidden_size: expected hidden_size >= 1, got 0"),
    (["model=char_rnn", "data=synthetic"], "Error: " + MISMATCHES[("char_rnn", "synthetic")]),
    (["model.net.hidden_size=${data.nothing}"],
     "Error: model.net.hidden_size: Interpolation key 'data.nothing' not found"),
], ids=["bad_value", "model_data_mismatch", "broken_interpolation"])
@pytest.mark.subprocess
def test_train_script_prints_one_line_and_exits_1(args, last_line, tmp_path, script, result):
    proc = script("train", *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == last_line
    assert result(tmp_path)["status"] == "failed"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.subprocess
def test_unknown_model_choice_gets_hydras_list_of_choices(tmp_path, script):
    proc = script("train", "model=nonexistent", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Could not find 'model/nonexistent'" in proc.stderr
    assert re.search(r"Available options in 'model':\s+birnn_tagger\s+char_rnn\s+classifier\s+tagger", proc.stderr)


def test_report_errors_keeps_tracebacks_for_bugs_and_on_request(monkeypatch, capsys):
    monkeypatch.delenv("RNNLAB_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exited, report_errors():
        CharRNN(0, 8, 16)  # a check rnnlab makes: one line
    assert exited.value.code == 1 and capsys.readouterr().err == "Error: expected vocab_size >= 1, got 0\n"
    with pytest.raises(RuntimeError, match="size of tensor a"), report_errors():
        torch.zeros(2) + torch.zeros(3)  # torch's own error, a bug somewhere: traceback kept
    # A torch operation failing inside rnnlab's own code is a bug too (as the recurrences'
    # backward was under mixed precision): not a one-line config error.
    with pytest.raises(RuntimeError, match="dtype"), report_errors():
        StepWeight(torch.zeros(4, 4), 2)(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4))
    for switch in ("RNNLAB_DEBUG", "HYDRA_FULL_ERROR"):  # the traceback on request
        monkeypatch.setenv(switch, "1")
        with pytest.raises(ValueError, match="expected vocab_size >= 1, got 0"), report_errors():
            CharRNN(0, 8, 16)
        monkeypatch.delenv(switch)


@pytest.mark.parametrize("temperature", [0, -0.5])
def test_generate_refuses_a_temperature_that_is_not_positive(temperature, char_ckpt, tmp_path):
    cfg = compose_config("generate", [f"ckpt_path={char_ckpt}", f"temperature={temperature}"], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"temperature: expected a number > 0, got {temperature}")):
        generate(cfg)


@pytest.mark.subprocess
def test_generate_on_a_device_this_machine_lacks_is_one_line(char_ckpt, tmp_path, script):
    device = "cuda" if not torch.cuda.is_available() else "xla"
    proc = script("generate", f"ckpt_path={char_ckpt}", f"device={device}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("Error: device: expected ") and repr(device) in last


@pytest.mark.subprocess
def test_summarize_on_a_directory_that_is_not_a_sweep_is_one_line(tmp_path, script):
    from rnnlab.summarize import summarize

    expected = "expected a sweep directory (one sub-directory with result.json per job), got '{}', {}"
    with pytest.raises(ValueError, match=re.escape(expected.format(tmp_path, "which has none"))):
        summarize(tmp_path)
    proc = script("summarize", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "Error: " + expected.format(tmp_path / "nowhere",
                                                                                 "which does not exist")


def test_more_cpu_processes_than_cores_are_warned_about(train_config, caplog, monkeypatch):
    from rnnlab.train import check_launch

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with caplog.at_level("WARNING", logger="rnnlab.train"):
        check_launch(train_config("trainer=ddp_cpu", "trainer.devices=3"))
    assert ("trainer.devices=3 starts 3 training processes on the CPU of a machine with 2 cores"
            in caplog.text)
    caplog.clear()
    with caplog.at_level("WARNING", logger="rnnlab.train"):
        check_launch(train_config("trainer=ddp_cpu", "trainer.devices=2"))
    assert caplog.text == ""


def test_dropout_that_a_one_layer_rnn_cannot_apply_is_warned_about():
    from rnnlab.models import RNN, BidirectionalRNN, SequenceClassifier

    with pytest.warns(UserWarning, match="dropout acts between stacked layers, so it needs num_layers > 1, got "
                                         "dropout=0.3 and num_layers=1: no dropout is applied"):
        RNN(4, 8, num_layers=1, dropout=0.3)
    with pytest.warns(UserWarning, match="dropout acts between stacked layers"):
        BidirectionalRNN(4, 8, num_layers=1, dropout=0.3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the classifier's head still applies its dropout: no warning
        model = SequenceClassifier(4, 8, 2, num_layers=1, dropout=0.3)
    assert model.head_dropout.p == 0.3 and model.rnn.layer_dropout is None


@pytest.mark.parametrize("model,data", [("classifier", "sequences"), ("birnn_tagger", "conll")])
def test_an_unusable_data_file_is_refused_before_any_training_step(model, data, tmp_path, training_steps):
    """The test file is read, and refused, before the first training step (here: a NaN value, a
    tag training never saw)."""
    from datafiles import make_sentences, make_sequences, write_conll, write_sequences

    if data == "sequences":
        sequences, labels = make_sequences(40)
        train_file = write_sequences(tmp_path / "train", sequences, labels, "npz")
        sequences[3][2, 1] = float("nan")
        test_file = write_sequences(tmp_path / "test", sequences, labels, "npz")
        expected = f"data.test_path: '{test_file}': sequence 3 has nan at step 2, feature 1"
    else:
        train_file = write_conll(tmp_path / "train.conll", make_sentences(40))
        test_file = tmp_path / "test.conll"
        test_file.write_text("Alice B-PER\nsang B-VERB\n\n")
        expected = f"data.test_path: '{test_file}', line 2: tag 'B-VERB', which the training data never has"
    cfg = compose_config("train", [*QUIET, f"model={model}", f"data={data}", f"data.path={train_file}",
                                   f"data.test_path={test_file}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(cfg)
    assert training_steps == []
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.subprocess
def test_predict_script_refuses_a_model_that_reads_no_files_in_one_line(tmp_path, script, classifier_ckpt):
    proc = script("predict", f"ckpt_path={classifier_ckpt}", f"input={tmp_path}/new.npz",
                  f"output={tmp_path}/out.csv", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith(
        "Error: ckpt_path: this model was trained on rnnlab.data.SyntheticSequenceDataModule, which reads no files")
