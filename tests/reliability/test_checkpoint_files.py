"""Checkpoints are data, not code: a crafted file is refused without running its payload, a
damaged file is named, a checkpoint of another model or vocabulary lists what differs."""

import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.analyze import analyze_checkpoint
from rnnlab.checkpoints import AtomicCheckpointIO, CheckpointError, load_task
from rnnlab.eval import evaluate
from rnnlab.generate import generate
from rnnlab.train import train


class Payload:
    """Unpickling this creates ``marker``: the stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def craft(source: Path, target: Path, marker: Path) -> Path:
    """A copy of a real checkpoint with the payload hidden among its plain values."""
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["rnnlab"]["data"]["seed"] = Payload(marker)
    torch.save(checkpoint, target)
    return target


@pytest.fixture
def malicious(char_ckpt, tmp_path):
    marker = tmp_path / "payload_ran"
    path = craft(char_ckpt, tmp_path / "last.ckpt", marker)
    # The payload is live: an unrestricted torch.load of a copy runs it.
    proof = tmp_path / "proof_marker"
    torch.load(craft(char_ckpt, tmp_path / "copy.ckpt", proof), weights_only=False)
    assert proof.exists()
    return path, marker


REFUSED = r"refusing to load '.*last\.ckpt': it holds objects other than tensors and plain Python values, " \
          r"which could run code when unpickled \(.*GLOBAL [\w.]+"


def test_malicious_checkpoint_is_refused_everywhere_and_its_payload_never_runs(malicious, tmp_path):
    path, marker = malicious
    loaders = {
        "eval": lambda: evaluate(compose_config("eval", [f"ckpt_path={path}", "trainer.accelerator=cpu"], tmp_path)),
        "generate": lambda: generate(compose_config("generate", [f"ckpt_path={path}"], tmp_path)),
        "analyze": lambda: analyze_checkpoint(path, 4, tmp_path / "figures"),
        "resume": lambda: train(compose_config("train", [*QUIET, *TINY["chars"], "model=char_rnn",
                                                         f"ckpt_path={path}"], tmp_path / "resume")),
        # The reader Lightning's Trainer uses for fit/test(ckpt_path=...), even when asked
        # for an unrestricted load.
        "lightning": lambda: L.Trainer(plugins=[AtomicCheckpointIO()], logger=False).strategy.load_checkpoint(
            path, weights_only=False),
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError, match=REFUSED):
            load()
        assert not marker.exists(), f"{name} ran the payload"
    assert not (tmp_path / "resume" / "checkpoints").exists()


@pytest.mark.subprocess
def test_eval_script_refuses_a_malicious_checkpoint_in_one_line(malicious, tmp_path, script):
    path, marker = malicious
    proc = script("eval", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.fullmatch("Error: " + REFUSED + r".*\)", proc.stderr.rstrip().splitlines()[-1])
    assert not marker.exists()


def damage(kind: str, source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 40, "empty": b"",
                        "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]}[kind])
    return target


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "truncated or corrupted ("),
    ("garbage", "truncated or corrupted (Unsupported operand"),
    ("empty", "the file is empty"),
    ("flipped", "truncated or corrupted ("),
], ids=["truncated", "garbage", "empty", "flipped_bytes"])
def test_damaged_checkpoint_is_named_for_eval_and_resume(kind, reason, classifier_ckpt, tmp_path):
    path = damage(kind, classifier_ckpt, tmp_path / "damaged.ckpt")
    expected = re.escape(f"cannot read checkpoint '{path}': {reason}")
    with pytest.raises(CheckpointError, match=expected):
        load_task(path)
    with pytest.raises(CheckpointError, match=expected):
        train(compose_config("train", [*QUIET, *TINY["synthetic"], "model.net.hidden_size=16",
                                       f"ckpt_path={path}"], tmp_path / "resume"))


@pytest.mark.subprocess
def test_eval_script_names_a_truncated_checkpoint_in_one_line(classifier_ckpt, tmp_path, script):
    path = damage("truncated", classifier_ckpt, tmp_path / "damaged.ckpt")
    proc = script("eval", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith(
        f"Error: cannot read checkpoint '{path}': truncated or corrupted (")


def test_resuming_with_a_different_model_lists_every_difference(classifier_ckpt, tmp_path):
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "model.net.hidden_size=32", "model.net.cell=gru",
                                   f"ckpt_path={classifier_ckpt}"], tmp_path)
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    assert str(raised.value) == (f"ckpt_path: '{classifier_ckpt}' holds a different model than this run's config: "
                                 "model.net.cell: checkpoint 'rnn_tanh', config 'gru'; "
                                 "model.net.hidden_size: checkpoint 16, config 32")


OTHER_TEXT = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG 0123456789\n"


def other_corpus(tmp_path) -> Path:
    path = tmp_path / "other.txt"
    path.write_text(OTHER_TEXT * 400)
    return path


def only_in(a: str, b: str) -> str:
    return repr("".join(sorted(set(a) - set(b))))


def test_resuming_on_a_different_vocabulary_lists_the_characters(char_ckpt, tmp_path):
    cfg = compose_config("train", [*QUIET, "model=char_rnn", "model.net.hidden_size=16", "model.net.num_layers=1",
                                   f"data.path={other_corpus(tmp_path)}", "data.seq_len=32",
                                   f"ckpt_path={char_ckpt}"], tmp_path / "run")
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    vocab = torch.load(char_ckpt, weights_only=True)["hyper_parameters"]["vocab"]
    other = "".join(sorted(set(OTHER_TEXT)))
    assert str(raised.value) == (
        f"ckpt_path: '{char_ckpt}' holds a different model than this run's config: "
        f"model.net.vocab_size: checkpoint {len(vocab)}, config {len(other)}; "
        f"model.vocab: checkpoint has {len(vocab)} characters, config {len(other)}; "
        f"only in checkpoint: {only_in(vocab, other)}, only in config: {only_in(other, vocab)}")


def test_eval_on_data_of_another_vocabulary_lists_the_characters(char_ckpt, tmp_path):
    cfg = compose_config("eval", [f"ckpt_path={char_ckpt}", f"+data.path={other_corpus(tmp_path)}",
                                  "trainer.accelerator=cpu"], tmp_path)
    vocab = torch.load(char_ckpt, weights_only=True)["hyper_parameters"]["vocab"]
    other = "".join(sorted(set(OTHER_TEXT)))
    with pytest.raises(ValueError) as raised:
        evaluate(cfg)
    assert str(raised.value) == (
        f"data: does not match the checkpoint's model: model.net.vocab_size: checkpoint {len(vocab)}, "
        f"data {len(other)}; model.vocab: checkpoint has {len(vocab)} characters, data {len(other)}; "
        f"only in checkpoint: {only_in(vocab, other)}, only in data: {only_in(other, vocab)}")


def test_eval_on_data_of_another_size_names_the_sizes(classifier_ckpt, tmp_path):
    cfg = compose_config("eval", [f"ckpt_path={classifier_ckpt}", "+data.input_size=5", "trainer.accelerator=cpu"],
                         tmp_path)
    with pytest.raises(ValueError) as raised:
        evaluate(cfg)
    assert str(raised.value) == "data: does not match the checkpoint's model: model.net.input_size: checkpoint 10, data 5"


PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def _walk(value, where):
    """Every (path, type) in a nested checkpoint that is not a tensor or a plain Python value."""
    if type(value) is dict:
        return [bad for key, item in value.items() for bad in _walk(item, f"{where}.{key}")]
    if type(value) in (list, tuple):
        return [bad for i, item in enumerate(value) for bad in _walk(item, f"{where}[{i}]")]
    return [] if isinstance(value, PLAIN) else [(where, type(value))]


def test_checkpoints_hold_only_tensors_and_plain_values(classifier_ckpt, char_ckpt):
    for path in (classifier_ckpt, char_ckpt):
        checkpoint = torch.load(path, weights_only=False)  # our own file: see what is really in it
        assert _walk(checkpoint, "checkpoint") == []
        for key in ("state_dict", "optimizer_states", "loops", "callbacks", "hyper_parameters",
                    "datamodule_hyper_parameters", "rnnlab"):
            assert key in checkpoint
    assert torch.load(classifier_ckpt, weights_only=True)["lr_schedulers"]  # the cosine schedule's state
    assert isinstance(torch.load(char_ckpt, weights_only=True)["hyper_parameters"]["vocab"], str)


def test_saving_a_config_object_is_refused_before_writing(classifier_ckpt, tmp_path):
    from omegaconf import OmegaConf

    target = tmp_path / "checkpoints" / "bad.ckpt"
    shutil.copy(classifier_ckpt, target.parent.mkdir() or target)
    before = target.read_bytes()
    checkpoint = torch.load(classifier_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["net"] = OmegaConf.create(checkpoint["hyper_parameters"]["net"])
    with pytest.raises(CheckpointError, match=re.escape(f"cannot save checkpoint '{target}'.hyper_parameters.net: "
                                                        "it holds a omegaconf.dictconfig.DictConfig")):
        AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    assert target.read_bytes() == before


def test_a_model_trained_on_a_relative_path_evaluates_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    corpus = tmp_path / "a" / "corpus.txt"
    corpus.write_text(OTHER_TEXT * 400)
    monkeypatch.chdir(tmp_path / "a")
    cfg = compose_config("train", [*QUIET, "model=char_rnn", "model.net.hidden_size=16", "model.net.num_layers=1",
                                   "data.path=corpus.txt", "data.seq_len=32", "data.windows_per_epoch=256",
                                   "trainer.max_epochs=1", "model.sample_max_new_tokens=10"], tmp_path / "run")
    metrics, _ = train(cfg)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["rnnlab"]["data"]["path"] == str(corpus)
    monkeypatch.chdir(tmp_path / "b")
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"], tmp_path / "e1"))
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    # eval.yaml's own example: another text with data.path=..., no '+' needed.
    shutil.copy(corpus, tmp_path / "b" / "copy.txt")
    on_copy = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "data.path=copy.txt", "trainer.accelerator=cpu"],
                                      tmp_path / "e2"))
    assert on_copy["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    corpus.unlink()  # the path that was tried is named
    with pytest.raises(FileNotFoundError, match=re.escape(f"got '{corpus}', which does not exist")):
        evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"], tmp_path / "e3"))


def test_a_difference_names_its_key_and_both_values_and_compares_vocabularies_by_character():
    from rnnlab.checkpoints import describe_difference

    assert describe_difference("model.net.hidden_size", 8, 16, "checkpoint", "config") == \
        "model.net.hidden_size: checkpoint 8, config 16"
    assert describe_difference("", "a", "b", "checkpoint", "data") == "checkpoint 'a', data 'b'"
    letters = "abcdefghijklmnopqrstuvwxyz"
    assert describe_difference("data.vocab", letters, letters[::-1], "checkpoint", "data") == \
        "data.vocab: the same 26 characters in a different order"
    assert describe_difference("vocab", letters, letters[:-1] + "!?", "checkpoint", "data") == \
        "vocab: checkpoint has 26 characters, data 27; only in checkpoint: 'z', only in data: '!?'"
    assert describe_difference("vocab", letters[:21], letters[:20] + "!", "checkpoint", "data") == \
        "vocab: checkpoint has 21 characters, data 21; only in checkpoint: 'u', only in data: '!'"
    assert describe_difference("cfg.data.vocab", letters, letters[:-1], "checkpoint", "data") == \
        "cfg.data.vocab: checkpoint has 26 characters, data 25; only in checkpoint: 'z', only in data: ''"
    # Short vocabularies, keys that only end in "vocab", and values that are not text: as they are.
    assert describe_difference("vocab", letters[:20], letters[:19] + "!", "checkpoint", "data") == \
        f"vocab: checkpoint {letters[:20]!r}, data {letters[:19] + '!'!r}"
    assert describe_difference("data.my_vocab", letters, letters[::-1], "a", "b") == \
        f"data.my_vocab: a {letters!r}, b {letters[::-1]!r}"
    assert describe_difference("vocab.size", letters, letters[::-1], "a", "b") == \
        f"vocab.size: a {letters!r}, b {letters[::-1]!r}"
    assert describe_difference("vocab", list(letters), letters, "a", "b") == f"vocab: a {list(letters)!r}, b {letters!r}"


def test_an_errors_reason_is_its_first_sentence_without_the_type():
    from rnnlab.checkpoints import _reason

    assert _reason(RuntimeError("PytorchStreamReader failed. Check the file. More text")) == \
        "PytorchStreamReader failed"
    assert _reason(ValueError("unexpected end of data...")) == "unexpected end of data"
    assert _reason(ValueError(".hidden file is empty")) == ".hidden file is empty"
    assert _reason(KeyError("x")) == "'x'"


def test_only_rnnlabs_and_torch_optims_classes_may_be_named_in_a_checkpoint(tmp_path):
    from rnnlab.checkpoints import check_targets

    path = tmp_path / "x.ckpt"
    check_targets({"net": {"_target_": "rnnlab.models.RNN"}, "optimizer": {"_target_": "torch.optim.Adam"},
                   "callbacks": [{"lr": 1}], "_target_": "rnnlab.tasks.ClassificationTask"}, path)
    for config, where, target in [
        ({"_target_": "builtins.eval"}, "config", "builtins.eval"),
        ({"net": {"_target_": "os.system"}}, "net", "os.system"),
        ({"net": {"inner": [{"a": 1}, {"_target_": "subprocess.run"}]}}, "net.inner[1]", "subprocess.run"),
        ({"optimizer": {"_target_": 3}}, "optimizer", 3),
        ({"net": {"_target_": "rnnlabx.evil"}}, "net", "rnnlabx.evil"),
    ]:
        with pytest.raises(CheckpointError) as raised:
            check_targets(config, path)
        assert str(raised.value) == (f"refusing to load {str(path)!r}: {where}._target_={target!r} "
                                     "is not one of rnnlab's or torch.optim's classes")


@pytest.mark.parametrize("entry,where", [("model", "model.net._target_='os.system'"), ("data", "data._target_='os.system'")])
def test_loading_a_task_refuses_a_checkpoint_that_names_another_class(entry, where, classifier_ckpt, tmp_path):
    checkpoint = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)
    if entry == "model":
        checkpoint["hyper_parameters"]["net"]["_target_"] = "os.system"
    else:
        checkpoint["rnnlab"]["data"]["_target_"] = "os.system"
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        load_task(path)
    hint = "; to use a data class of your own, name it on the command line: data._target_=os.system"
    assert str(raised.value) == (f"refusing to load {str(path)!r}: {where} "
                                 "is not one of rnnlab's or torch.optim's classes" + (hint if entry == "data" else ""))


@pytest.mark.parametrize("drop", [["rnnlab"], ["hyper_parameters"], ["rnnlab", "hyper_parameters"]])
def test_a_checkpoint_without_rnnlabs_entries_is_refused_naming_them(drop, classifier_ckpt, tmp_path):
    checkpoint = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)
    for key in drop:
        del checkpoint[key]
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        load_task(path)
    assert str(raised.value) == (f"{str(path)!r} was not written by rnnlab "
                                 f"(no {' or '.join(repr(key) for key in drop)} entry)")


@pytest.mark.parametrize("task", [None, "rnnlab.tasks.Nowhere", "collections.OrderedDict",
                                  "rnnlab.tasks.entities.EntityScores"])
def test_loading_a_task_refuses_a_checkpoint_whose_task_is_not_an_rnnlab_task(task, classifier_ckpt, tmp_path):
    checkpoint = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)
    checkpoint["rnnlab"]["task"] = task
    path = tmp_path / "other.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        load_task(path)
    assert str(raised.value) == f"refusing to load {str(path)!r}: task {task!r} is not an rnnlab task class"


def test_loading_a_task_whose_weights_do_not_fit_its_hyperparameters_names_each_mismatch(classifier_ckpt, tmp_path):
    checkpoint = torch.load(classifier_ckpt, map_location="cpu", weights_only=False)
    weights = checkpoint["state_dict"]
    weights["net.fc.weight"] = weights["net.fc.weight"][:, :3]
    del weights["net.fc.bias"]
    path = tmp_path / "cut.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        load_task(path)
    message = str(raised.value)  # torch's own words for each mismatch, one line
    prefix = f"{str(path)!r}: its weights do not fit the model its hyperparameters describe ("
    assert message.startswith(prefix) and message.endswith(")") and "\n" not in message
    details = message[len(prefix):-1].split("; ")
    assert len(details) == 2 and details[0].startswith("Missing key(s)") and "net.fc.bias" in details[0]
    assert details[1].startswith("size mismatch for net.fc.weight")
