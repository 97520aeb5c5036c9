"""A user's files through every task: train, then evaluate and predict on new files from the
checkpoint alone (the training file deleted), with predictions equal to what the trained
network computes."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datafiles import FORMATS, make_sentences, make_sequences, write_conll, write_sequences
from helpers import QUIET, compose_config
from rnnlab.checkpoints import load_checkpoint, load_task, restore_data_state
from rnnlab.errors import ConfigError
from rnnlab.eval import evaluate
from rnnlab.predict import predict, tagging_rows
from rnnlab.train import train

EVAL = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


def best_checkpoint(run: Path) -> Path:
    return next((run / "checkpoints").glob("epoch_*.ckpt"))


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def network_predictions(ckpt: Path, overrides: dict, stage: str = "test"):
    """What the trained network computes on a split, batch by batch: (argmax indices, batches)."""
    from hydra.utils import instantiate

    task, data_config = load_task(ckpt)
    data = instantiate({**data_config, **overrides})
    restore_data_state(data, task)
    data.setup(stage)
    loader = data.test_dataloader() if stage == "test" else data.predict_dataloader()
    with torch.no_grad():
        outputs = [(task.net(batch[0], lengths=batch[2] if len(batch) > 2 else None).argmax(-1), batch)
                   for batch in loader]
    return task, outputs


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_classifier_trained_on_files_evaluates_and_predicts_from_its_checkpoint_alone(fmt, tmp_path):
    def labelled(n, seed):  # .npz and .pt: int labels that do not start at 0; CSV and .ts: strings
        sequences, labels = make_sequences(n, seed)
        return sequences, [{"walk": 3, "run": 1, "sit": 2}[y] for y in labels] if fmt in ("npz", "pt") else labels

    train_file = write_sequences(tmp_path / "train", *labelled(300, 0), fmt)
    test_file = write_sequences(tmp_path / "test", *labelled(60, 5), fmt)
    columns = ["data.time_column=t"] if fmt == "csv" else []
    run = tmp_path / "run"
    cfg = compose_config("train", [*QUIET, "model=classifier", "data=sequences", f"data.path={train_file}",
                                   f"data.test_path={test_file}", *columns, "trainer.max_epochs=3",
                                   "model.net.hidden_size=16", "model.optimizer.lr=0.01", "data.batch_size=32"], run)
    metrics, _ = train(cfg)
    assert metrics["test/acc"] > 0.6, metrics  # chance: 1/3
    ckpt = best_checkpoint(run)
    names = [1, 2, 3] if fmt in ("npz", "pt") else ["run", "sit", "walk"]
    checkpoint = load_checkpoint(ckpt)
    assert checkpoint["hyper_parameters"]["class_names"] == names
    assert checkpoint["hyper_parameters"]["net"]["input_size"] == 3
    assert checkpoint["hyper_parameters"]["net"]["num_classes"] == 3
    train_file.unlink()  # eval and predict read the checkpoint and the file they are given, nothing else

    again = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", f"data.test_path={test_file}", *EVAL],
                                    tmp_path / "eval"))
    for key in ("test/acc", "test/loss", "test/f1"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)

    output = tmp_path / f"predictions.{'jsonl' if fmt == 'pt' else 'csv'}"
    predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={test_file}", f"output={output}", *EVAL],
                           tmp_path / "predict"))
    rows = read_rows(output)
    task, outputs = network_predictions(ckpt, {"predict_path": str(test_file)}, stage="predict")
    computed = [task.class_names[i] for indices, _ in outputs for i in indices.tolist()]
    as_written = [row["prediction"] for row in rows]
    assert as_written == (computed if fmt == "pt" else [str(c) for c in computed])
    correct = sum(str(row["prediction"]) == str(row["label"]) for row in rows)
    assert correct / len(rows) == pytest.approx(metrics["test/acc"], abs=1e-6)
    if fmt == "pt":
        assert sum(rows[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert set(rows[0]["probabilities"]) == {"1", "2", "3"}
    else:
        assert [key for key in rows[0] if key.startswith("p_")] == [f"p_{n}" for n in names]
    if fmt == "csv":
        assert rows[0]["id"].startswith("s")


def test_the_classifiers_reports_name_the_classes(tmp_path):
    train_file = write_sequences(tmp_path / "train", *make_sequences(200), "npz")
    cfg = compose_config("train", [*QUIET, "model=classifier", "data=sequences", f"data.path={train_file}",
                                   "trainer.max_epochs=1", "model.net.hidden_size=8"], tmp_path / "run")
    train(cfg)
    tags = {}
    for events in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
        accumulator.Reload()
        tags.update({tag: accumulator for tag in accumulator.Tags()["images"] + accumulator.Tags()["tensors"]})
    assert {"val/confusion_matrix", "test/confusion_matrix", "test/per_class/text_summary"} <= set(tags)
    image = tags["test/confusion_matrix"].Images("test/confusion_matrix")[-1]
    assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100
    report = tags["test/per_class/text_summary"].Tensors("test/per_class/text_summary")[-1]
    text = report.tensor_proto.string_val[0].decode()
    assert all(name in text for name in ("run", "sit", "walk", "precision", "support"))


@pytest.mark.parametrize("fmt,model", [("columns", "birnn_tagger"), ("conllu", "tagger")])
def test_a_tagger_trained_on_conll_files_evaluates_and_predicts_from_its_checkpoint_alone(fmt, model, tmp_path):
    suffix = ".conllu" if fmt == "conllu" else ".conll"
    train_file = write_conll(tmp_path / f"train{suffix}", make_sentences(300), fmt)
    test_file = write_conll(tmp_path / f"test{suffix}", make_sentences(60, seed=4), fmt)
    run = tmp_path / "run"
    cfg = compose_config("train", [*QUIET, f"model={model}", "data=conll", f"data.path={train_file}",
                                   f"data.test_path={test_file}", "trainer.max_epochs=3", "model.net.hidden_size=16",
                                   "model.net.embed_dim=16", "model.optimizer.lr=0.01"], run)
    metrics, _ = train(cfg)
    net = load_checkpoint(best_checkpoint(run))["hyper_parameters"]
    if fmt == "columns":  # the entity tags, BIO: token and entity scores
        assert net["tag_names"] == ["B-LOC", "B-PER", "I-PER", "O"]
        assert metrics["test/acc"] > 0.9 and metrics["test/entity_f1"] > 0.8, metrics
    else:  # UPOS
        assert net["tag_names"] == ["PROPN", "PUNCT", "X"] and "test/entity_f1" not in metrics
        assert metrics["test/acc"] > 0.9, metrics
    assert net["net"]["vocab_size"] == 2 + 19 and net["net"]["input_size"] is None  # <pad>, <unk>, 19 words
    ckpt = best_checkpoint(run)
    train_file.unlink()

    again = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", f"data.test_path={test_file}", *EVAL],
                                    tmp_path / "eval"))
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)

    output = tmp_path / "tags.jsonl"
    predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={test_file}", f"output={output}", *EVAL],
                           tmp_path / "predict"))
    rows = read_rows(output)
    task, outputs = network_predictions(ckpt, {"predict_path": str(test_file)}, stage="predict")
    computed = [task.tag_names[int(i)] for indices, batch in outputs
                for row, length in zip(indices, batch[2]) for i in row[: int(length)]]
    assert [row["prediction"] for row in rows] == computed
    sentences = make_sentences(60, seed=4)
    assert [row["token"] for row in rows] == [token for s in sentences for token, _, _ in s]
    correct = sum(row["prediction"] == row["tag"] for row in rows)
    assert correct / len(rows) == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_a_language_model_trains_on_a_directory_of_files(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / ".hidden").write_text("\x00 not text")  # hidden files are left out
    for i in range(6):
        (corpus / ("sub" if i % 2 else ".") / f"doc{i}.txt").write_text(f"document {i}: " + "abcab " * 200)
    run = tmp_path / "run"
    cfg = compose_config("train", [*QUIET, "model=char_rnn", f"data.path={corpus}", "data.seq_len=16",
                                   "data.split_by=documents", "trainer.max_epochs=1", "model.net.hidden_size=16",
                                   "model.net.num_layers=1", "data.windows_per_epoch=128"], run)
    metrics, _ = train(cfg)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    vocab = checkpoint["hyper_parameters"]["vocab"]
    assert checkpoint["hyper_parameters"]["net"]["vocab_size"] == len(vocab)
    assert set(vocab) <= set("document 012345:abc\n\ufffd") and set("abc \n") <= set(vocab)
    assert metrics["test/bpc"] < math.log2(len(vocab)) - 0.3  # below uniform after one short epoch


def test_eval_takes_a_users_data_class_when_it_is_named_again(tmp_path):
    from omegaconf import OmegaConf, open_dict

    cfg = compose_config("train", [*QUIET, "model=classifier", "trainer.max_epochs=1"], tmp_path / "run")
    with open_dict(cfg):
        cfg.data = OmegaConf.create({"_target_": "userdata.Series", "num_sequences": 200, "batch_size": 32})
    metrics, _ = train(cfg)
    ckpt = best_checkpoint(tmp_path / "run")
    with pytest.raises(Exception, match="name it on the command line: data._target_=userdata.Series"):
        evaluate(compose_config("eval", [f"ckpt_path={ckpt}", *EVAL], tmp_path / "eval"))
    again = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "data._target_=userdata.Series", *EVAL],
                                    tmp_path / "eval"))
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_predict_refuses_what_it_cannot_do_before_reading_anything(tmp_path, char_ckpt, classifier_ckpt):
    def run(ckpt, output, **more):
        cfg = compose_config("predict", [f"ckpt_path={ckpt}", "input=in.npz", f"output={output}", *EVAL,
                                         *(f"{k}={v}" for k, v in more.items())], tmp_path)
        with pytest.raises(ConfigError) as raised:
            predict(cfg)
        return str(raised.value)

    assert run(classifier_ckpt, tmp_path / "out.txt") == (f"output: expected a file ending in .csv or .jsonl, "
                                                         f"got '{tmp_path}/out.txt'")
    assert run(char_ckpt, tmp_path / "out.csv") == ("ckpt_path: expected a classifier or tagger checkpoint, got a "
                                                    "LanguageModelTask; sample from a language model with "
                                                    "scripts/generate.py")
    assert run(classifier_ckpt, tmp_path / "out.csv").startswith(
        "ckpt_path: this model was trained on rnnlab.data.SyntheticSequenceDataModule, which reads no files to "
        "predict on")
    assert not list(tmp_path.glob("out*"))


def test_tagging_rows_are_one_per_token_of_each_sentence_with_its_best_tag_and_probability():
    probs = [torch.tensor([[[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]], [[0.2, 0.8], [0.0, 0.0], [0.0, 0.0]]]),  # (2, 3, 2)
             torch.tensor([[[0.6123456789, 0.3876543211]]])]  # (1, 1, 2): the next batch
    sentences = SimpleNamespace(tokens=[["a", "b", "c"], ["d"], ["e"]], tags=[["Y", "X", "X"], ["Y"], ["X"]])
    rows = tagging_rows(probs, ["X", "Y"], sentences)
    assert rows == [
        {"sentence": 0, "position": 0, "token": "a", "prediction": "Y", "probability": 0.9, "tag": "Y"},
        {"sentence": 0, "position": 1, "token": "b", "prediction": "X", "probability": 0.7, "tag": "X"},
        {"sentence": 0, "position": 2, "token": "c", "prediction": "X", "probability": 0.5, "tag": "X"},
        {"sentence": 1, "position": 0, "token": "d", "prediction": "Y", "probability": 0.8, "tag": "Y"},  # no padding
        {"sentence": 2, "position": 0, "token": "e", "prediction": "X", "probability": 0.612346, "tag": "X"},
    ]
    # Feature sequences to tag (no tokens, no tags): every step of the batch, token left empty.
    rows = tagging_rows(probs[:1], ["X", "Y"], SimpleNamespace())
    assert [(r["sentence"], r["position"], r["token"]) for r in rows] == [(s, t, "") for s in (0, 1) for t in range(3)]
    assert all("tag" not in r for r in rows)
