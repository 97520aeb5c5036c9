"""Mechanisms tested by contrast: two seeds give two orders, two epochs two sets of random
numbers, the best checkpoint (not the last weights) is what the final test scores, the
best-so-far metric survives a resume, and dropout acts where the docstrings say."""

import json
import logging
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from helpers import QUIET, TINY, compose_config
from rnnlab.callbacks import NetworkSummary, StepSeed, StopOnInterrupt
from rnnlab.data import SyntheticSequenceDataModule
from rnnlab.eval import evaluate
from rnnlab.models import RNN, CharRNN, SequenceClassifier
from rnnlab.models.char_rnn import sample
from rnnlab.summarize import summarize
from rnnlab.tasks import ClassificationTask, LanguageModelTask, TaggingTask
from rnnlab.train import train

CLASSIFIER_NET = {"_target_": "rnnlab.models.SequenceClassifier", "input_size": 3, "hidden_size": 4, "num_classes": 2}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True}


def _first_features(run_seed: int, epoch: int = 0) -> torch.Tensor:
    L.seed_everything(run_seed, verbose=False)  # what train() does with cfg.seed
    dm = SyntheticSequenceDataModule(num_train=256, num_val=32, num_test=32, batch_size=256)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return next(iter(loader))[0][:, 0, 0]  # the first feature of each sample, in batch order


def test_the_runs_seed_sets_the_order_of_the_training_batches():
    # The data is the same (data.seed), only the order changes with the run's seed.
    assert torch.equal(_first_features(1), _first_features(1))
    assert not torch.equal(_first_features(1), _first_features(2))
    assert torch.equal(_first_features(1).sort().values, _first_features(2).sort().values)
    assert not torch.equal(_first_features(1, epoch=0), _first_features(1, epoch=1))


def _dropout_mask(seed: int, rank: int, epoch: int, batch: int) -> torch.Tensor:
    callback = StepSeed(seed)
    trainer = SimpleNamespace(global_rank=rank, current_epoch=epoch)
    module = SimpleNamespace(device=torch.device("cpu"))
    callback.on_train_batch_start(trainer, module, None, batch)
    mask = torch.rand(16)
    callback.on_train_batch_end(trainer, module, None, None, batch)
    return mask


def test_step_seed_gives_every_seed_rank_epoch_and_batch_its_own_random_numbers():
    reference = _dropout_mask(seed=1, rank=0, epoch=0, batch=0)
    assert torch.equal(_dropout_mask(1, 0, 0, 0), reference)  # a function of these four alone
    for other in [(2, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1)]:
        assert not torch.equal(_dropout_mask(*other), reference), other
    # Outside the step the global generator runs on as if the callback were not there.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _dropout_mask(1, 0, 0, 0)
    assert torch.equal(torch.rand(3), expected)


def test_the_best_so_far_metric_survives_a_checkpoint_round_trip():
    task = ClassificationTask(CLASSIFIER_NET, ADAM)
    task.monitor_best.update(torch.tensor(0.9))
    checkpoint = {"state_dict": task.state_dict()}  # what Lightning saves and restores
    task.on_save_checkpoint(checkpoint)
    resumed = ClassificationTask(CLASSIFIER_NET, ADAM)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    resumed.monitor_best.update(torch.tensor(0.5))  # a worse epoch after the resume
    assert float(resumed.monitor_best.compute()) == pytest.approx(0.9)


@pytest.mark.parametrize("task_name", ["classifier", "tagger"])
def test_the_model_summary_shows_the_network_and_not_the_tasks_metrics(task_name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    if task_name == "classifier":  # its metrics: losses, accuracies, best value, confusion matrices
        task = ClassificationTask(CLASSIFIER_NET, ADAM)
    else:  # and entity scores
        task = TaggingTask({"_target_": "rnnlab.models.SequenceTagger", "input_size": None, "vocab_size": 5,
                            "hidden_size": 4, "num_tags": 3}, ADAM, tag_names=["O", "B-PER", "I-PER"])
        assert task.entities is not None
    NetworkSummary(max_depth=4).on_fit_start(SimpleNamespace(is_global_zero=True, strategy=None), task)
    table = capsys.readouterr().out
    shown = [line.split("│")[2].strip() for line in table.splitlines() if line.startswith("│")]
    parts = [name.split(".") for name, _ in task.named_modules()]
    assert shown == [".".join(p) for p in parts if p[0] == "net" and len(p) <= 4]  # max_depth=4
    assert re.search(rf"^Modules in train mode: {len(shown)}\s*$", table, re.MULTILINE)
    assert "Trainable params: " + str(sum(p.numel() for p in task.parameters())) in table


def test_a_prompt_must_be_non_empty_text_over_the_vocabulary():
    from rnnlab.errors import ConfigError
    from rnnlab.tasks.language_model import check_prompt

    check_prompt("model.sample_prompt", "cab", "abc")
    for prompt, missing in (("abz!", "['!', 'z']"), ("", "[]")):
        with pytest.raises(ConfigError, match=re.escape(
                f"expected non-empty text over the model's 3-character vocabulary, got {prompt!r} "
                f"(characters not in it: {missing})")) as refused:
            check_prompt("model.sample_prompt", prompt, "abc")
        assert refused.value.key == "model.sample_prompt"
    with pytest.raises(ConfigError, match="got 'z'") as refused:  # the task checks its own prompt
        LanguageModelTask({"_target_": "rnnlab.models.CharRNN", "vocab_size": 3, "embed_dim": 4, "hidden_size": 4},
                          ADAM, vocab="abc", sample_prompt="z")
    assert refused.value.key == "sample_prompt"


@pytest.mark.parametrize("task_name", ["classifier", "tagger", "language_model"])
def test_every_task_builds_its_configured_optimizer_and_schedule(task_name):
    nets = {"classifier": (ClassificationTask, CLASSIFIER_NET),
            "tagger": (TaggingTask, {"_target_": "rnnlab.models.SequenceTagger", "input_size": 3, "hidden_size": 4,
                                     "num_tags": 2}),
            "language_model": (LanguageModelTask, {"_target_": "rnnlab.models.CharRNN", "vocab_size": 5,
                                                   "embed_dim": 4, "hidden_size": 4})}
    cls, net = nets[task_name]
    opt = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}
    schedule = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 3, "gamma": 0.1}
    optimizer = cls(net, opt).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5
    task = cls(net, opt, schedule)
    configured = task.configure_optimizers()
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.optimizer is configured["optimizer"]
    assert (scheduler.step_size, scheduler.gamma) == (3, 0.1)
    assert configured["lr_scheduler"]["monitor"] == task.monitor and configured["lr_scheduler"]["interval"] == "epoch"


def test_a_classifiers_per_class_report_counts_each_stages_predictions_and_is_logged_once_after_the_test(caplog):
    from rnnlab.tasks.base import split_key

    task = ClassificationTask(CLASSIFIER_NET, ADAM)
    preds, target = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1])
    scores = task.make_metrics()(preds, target)  # f1 is the classes' mean, not the share of right answers
    assert {k: v.item() for k, v in scores.items()} == pytest.approx({"acc": 5 / 6, "f1": (6 / 7 + 4 / 5) / 2})
    report = ("class  precision  recall      f1  support\n"
              "0         1.0000  0.7500  0.8571        4\n"
              "1         0.6667  1.0000  0.8000        2")
    for stage, rank_zero, sanity_check, logged in [("test", True, False, True), ("val", True, False, False),
                                                   ("test", False, False, False), ("test", True, True, False)]:
        task._trainer = SimpleNamespace(sanity_checking=sanity_check, is_global_zero=rank_zero, loggers=[],
                                        global_step=0)
        task.update_metrics(stage, preds, target)
        assert task.confusion[split_key(stage)].confmat.tolist() == [[3, 1], [0, 2]]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rnnlab"):
            task._end_confusion(stage)
        messages = [r.getMessage() for r in caplog.records]
        assert messages == (["Per-class test metrics:\n" + report] if logged else [])
        assert task.confusion[split_key(stage)].confmat.sum() == 0  # reset for the next epoch
    task._trainer = None


def test_the_hidden_state_figures_are_drawn_every_n_epochs_on_rank_zero_with_tensorboard_only(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from rnnlab.callbacks import HiddenStateMonitor

    class Drawn(Exception):  # raised where the monitor starts to read the validation batch
        pass

    def val_dataloader():
        raise Drawn

    tensorboard, csv_logger = TensorBoardLogger(tmp_path), CSVLogger(tmp_path)
    for sanity_check, epoch, every, rank_zero, loggers, drawn in [
            (False, 0, 1, True, [tensorboard], True), (True, 0, 1, True, [tensorboard], False),
            (False, 1, 2, True, [tensorboard], False), (False, 2, 2, True, [csv_logger, tensorboard], True),
            (False, 0, 1, False, [tensorboard], False), (False, 0, 1, True, [csv_logger], False)]:
        trainer = SimpleNamespace(sanity_checking=sanity_check, current_epoch=epoch, is_global_zero=rank_zero,
                                  loggers=loggers, datamodule=SimpleNamespace(val_dataloader=val_dataloader))
        try:
            HiddenStateMonitor(every_n_epochs=every).on_validation_epoch_end(trainer, None)
            assert not drawn
        except Drawn:
            assert drawn


def test_the_best_so_far_is_the_max_or_the_min_by_the_tasks_mode_and_none_before_validation():
    classifier = ClassificationTask(CLASSIFIER_NET, ADAM)
    language_model = LanguageModelTask({"_target_": "rnnlab.models.CharRNN", "vocab_size": 7, "embed_dim": 4,
                                        "hidden_size": 8, "num_layers": 1}, ADAM)
    for task, best in ((classifier, 0.9), (language_model, 0.4)):
        assert task.best_so_far() is None
        for value in (0.4, 0.9, 0.6):
            task.monitor_best.update(torch.tensor(value))
        assert task.best_so_far() == pytest.approx(best)


def test_the_final_test_scores_the_best_checkpoint_not_the_last_weights(tmp_path):
    # "Best" by the lowest validation accuracy, so that the best epoch is not the last one.
    cfg = compose_config("train", [*QUIET, *TINY["synthetic"], "data.num_train=2000", "trainer.max_epochs=3",
                                   "callbacks.model_checkpoint.mode=min"], tmp_path)
    metrics, _ = train(cfg)
    best = next((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    assert best.name != "epoch_002.ckpt"
    scored = {}
    for name in (best.name, "last.ckpt"):
        eval_cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'checkpoints' / name}", "trainer.accelerator=cpu",
                                           "trainer.enable_progress_bar=false"], tmp_path / "eval")
        scored[name] = evaluate(eval_cfg)["test/loss"]
    assert metrics["test/loss"] == pytest.approx(scored[best.name], rel=1e-6)
    assert scored[best.name] != pytest.approx(scored["last.ckpt"], rel=1e-3)


def _write_job(sweep_dir, job: int, metric: str, value: float) -> None:
    (sweep_dir / str(job)).mkdir(parents=True)
    (sweep_dir / str(job) / "result.json").write_text(json.dumps({
        "overrides": [f"model.net.hidden_size={8 * (job + 1)}"], "optimized_metric": metric,
        "mode": "min" if "bpc" in metric else "max", "status": "ok",
        "error": "", "value": value, "metrics": {metric: value}, "wall_time_s": 1.0}))


@pytest.mark.parametrize("metric,best_first", [("val/bpc_best", [1, 2, 0]), ("val/acc_best", [0, 2, 1])])
def test_sweep_summaries_list_the_best_job_first_whichever_way_the_metric_goes(tmp_path, metric, best_first):
    for job, value in enumerate([1.9, 1.2, 1.5]):
        _write_job(tmp_path, job, metric, value)
    rows = summarize(tmp_path)
    assert [int(r["job"]) for r in rows] == best_first


def test_the_classifier_drops_out_before_its_head():
    torch.manual_seed(0)
    model = SequenceClassifier(5, 16, 3, num_layers=1, dropout=0.5)  # one layer: only the head's dropout
    x = torch.randn(64, 7, 5)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # a new mask each call
    model.eval()
    _, h_n = model.rnn(x)
    torch.testing.assert_close(model(x), model.fc(h_n[-1]))  # the identity in eval mode
    model.train()
    with torch.no_grad():  # in training, the head sees h_T with units zeroed and the rest scaled by 2
        features = []
        model.fc.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
        model(x)
    kept = features[0] != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(features[0][kept], 2 * h_n[-1][kept])


def test_the_step_loop_drops_out_between_layers_in_training_only():
    torch.manual_seed(0)
    rnn = RNN(4, 32, num_layers=2, dropout=0.5)
    x_t, h = torch.randn(16, 4), torch.zeros(2, 16, 32)
    rnn.train()
    trained = [rnn.step(x_t, h) for _ in range(2)]
    assert not torch.allclose(trained[0][1], trained[1][1])  # the top layer reads a new mask each time
    torch.testing.assert_close(trained[0][0], trained[1][0])  # the bottom layer reads the input itself
    rnn.eval()
    plain = rnn.step(x_t, h)
    torch.testing.assert_close(rnn.step(x_t, h), plain)
    layer0 = rnn.cells[0](x_t, h[0])
    torch.testing.assert_close(plain[1], rnn.cells[1](layer0, h[1]))  # eval: no dropout at all


def test_top_k_sampling_draws_only_the_k_most_likely_tokens():
    torch.manual_seed(0)
    model = CharRNN(12, 8, 16, num_layers=1).eval()
    logits = torch.linspace(0, 5, 12).repeat(200, 1)  # token 11 most likely, then 10, 9, ...
    drawn = sample(logits, temperature=5.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(drawn.flatten().tolist()) == {9, 10, 11}
    ids = model.generate(torch.zeros(4, 2, dtype=torch.long), 30, temperature=2.0, top_k=2,
                         generator=torch.Generator().manual_seed(1))
    # Every sampled token is one of the two most likely at its step: replay the steps.
    logits_all, _ = model(ids[:, :-1])
    top2 = logits_all[:, 1:].topk(2, dim=-1).indices  # predictions for positions 2..T-1
    assert (top2 == ids[:, 2:, None]).any(-1).all()


def test_a_second_ctrl_c_stops_at_once():
    callback = StopOnInterrupt()
    callback._handle(None, None)
    assert callback.requested
    with pytest.raises(KeyboardInterrupt):
        callback._handle(None, None)


def _result(overrides, status="ok", value=None, metric="val/acc_best", mode="max", error="", **metrics):
    record = {"overrides": overrides, "optimized_metric": metric, "status": status, "error": error,
              "value": value, "metrics": metrics, "wall_time_s": 2.5}
    if mode is not None:
        record["mode"] = mode
    return record


def test_a_sweep_summary_lists_each_job_with_what_was_swept_its_status_and_metrics(tmp_path):
    import csv

    import matplotlib.image

    jobs = {  # job: result.json; seed stays the same, so it is not a swept column
        "0": _result(["model.net.hidden_size=8", "seed=1"], value=0.7, **{"val/acc_best": 0.7, "test/acc": 0.69,
                                                                         "train/loss": 0.5}),
        "1": _result(["model.net.hidden_size=16", "seed=1"], value=0.9, **{"val/acc_best": 0.9, "test/acc": 0.88}),
        "2": _result(["model.net.hidden_size=32", "seed=1"], status="failed", error="ValueError: a|b"),
        "10": _result(["model.net.hidden_size=64", "seed=1"], status="skipped", error="fail_fast"),
    }
    for job, record in jobs.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps(record))
    (tmp_path / "notes").mkdir()  # a directory without result.json is not a job

    rows = summarize(tmp_path)
    assert [r["job"] for r in rows] == ["1", "0", "2", "10"]  # finished best first, then failed, then skipped
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [
        ["job", "model.net.hidden_size", "status", "val/acc_best", "test/acc", "wall_time_s", "error"],
        ["1", "16", "ok", "0.9", "0.88", "2.5", ""],
        ["0", "8", "ok", "0.7", "0.69", "2.5", ""],
        ["2", "32", "failed", "", "", "2.5", "ValueError: a|b"],
        ["10", "64", "skipped", "", "", "2.5", "fail_fast"],
    ]
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert md[:3] == [f"# Sweep {tmp_path.name}", "",
                      "4 jobs: 2 ok, 1 failed, 1 skipped. Sorted by val/acc_best (higher is better)."]
    assert md[4] == "| job | model.net.hidden_size | status | val/acc_best | test/acc | wall_time_s | error |"
    assert md[6] == "| 1 | 16 | ok | 0.9000 | 0.8800 | 2.5000 |  |"
    assert md[8] == "| 2 | 32 | failed |  |  | 2.5000 | ValueError: a\\|b |"  # a | in a cell is escaped
    image = matplotlib.image.imread(tmp_path / "summary.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("target,order", [("rnnlab.tasks.LanguageModelTask", ["1", "0"]),
                                          ("rnnlab.tasks.ClassificationTask", ["0", "1"])])
def test_results_without_a_recorded_mode_take_the_direction_of_the_jobs_task(tmp_path, target, order):
    # result.json files from before the mode was recorded: the task in the job's config decides.
    for job, value in (("0", 1.9), ("1", 1.2)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "result.json").write_text(json.dumps(
            _result([f"seed={job}"], value=value, metric="val/x", mode=None, **{"val/x": value})))
        (tmp_path / job / ".hydra" / "config.yaml").write_text(f"model:\n  _target_: {target}\n")
    assert [r["job"] for r in summarize(tmp_path)] == order
    assert ("lower" if order == ["1", "0"] else "higher") + " is better" in (tmp_path / "summary.md").read_text()


def test_results_without_a_mode_or_a_config_are_summarized_highest_first(tmp_path):
    for job, value in (("0", 1.2), ("1", 1.9)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps(_result([f"seed={job}"], value=value, mode=None)))
    assert [r["job"] for r in summarize(tmp_path)] == ["1", "0"]


def test_an_optuna_search_names_its_best_trial_and_its_searched_parameters(tmp_path):
    for job, lr in (("0", "0.01"), ("1", "0.001")):  # the same lr in no two jobs, and a searched key
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps(
            _result([f"model.optimizer.lr={lr}", "model.net.hidden_size=8"], value=float(job), mode="max")))
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  model.net.hidden_size: 8\nbest_value: 1.0\n")
    summarize(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "Optuna best value: 1.0000 with {'model.net.hidden_size': 8}" in md
    header = md.splitlines()[6]
    assert header.startswith("| job | model.optimizer.lr | model.net.hidden_size | status |"), header


def test_a_language_models_sample_is_its_networks_generation_decoded_and_seeded():
    from rnnlab.tasks import LanguageModelTask

    torch.manual_seed(0)
    vocab = "abcdefg"
    task = LanguageModelTask({"_target_": "rnnlab.models.CharRNN", "vocab_size": 7, "embed_dim": 4, "hidden_size": 8,
                              "num_layers": 1}, {"_target_": "torch.optim.Adam", "_partial_": True}, vocab=vocab,
                             sample_prompt="a")
    task.train()
    text = task.sample("abc", 20, temperature=1.5, seed=3, top_k=2)
    assert task.training  # sampling leaves the mode as it was
    ids = task.net.eval().generate(torch.tensor([[0, 1, 2]]), 20, temperature=1.5, top_k=2,
                                   generator=torch.Generator().manual_seed(3))
    assert text == "".join(vocab[i] for i in ids[0].tolist()) and len(text) == 23 and text.startswith("abc")
    assert task.sample("abc", 20, temperature=1.5, seed=3, top_k=2) == text        # the seed decides
    assert task.sample("abc", 20, temperature=1.5, seed=4, top_k=2) != text
    assert task.sample("abc", 20, temperature=1.5, seed=3) != text                  # top_k is passed on
    assert task.sample("abc", 20, temperature=0.2, seed=3, top_k=2) != text         # so is the temperature
    assert task.decode([6, 0]) == "ga" and task.encode("ga").tolist() == [[6, 0]]


def test_bits_per_character_and_perplexity_follow_from_the_loss():
    from rnnlab.tasks import LanguageModelTask

    task = LanguageModelTask({"_target_": "rnnlab.models.CharRNN", "vocab_size": 7, "embed_dim": 4, "hidden_size": 8,
                              "num_layers": 1}, {"_target_": "torch.optim.Adam", "_partial_": True})
    values = task.epoch_values("val", torch.tensor(1.5))
    assert values["val/bpc"].item() == pytest.approx(1.5 / 0.6931471805599453)
    assert values["val/ppl"].item() == pytest.approx(4.4816890703380645)


def test_sampling_at_a_tiny_temperature_is_greedy_for_every_row_without_overflow():
    # Logits far apart between rows: each row's own maximum must be subtracted before
    # dividing by the temperature, or the rows with the smaller maximum overflow to NaN.
    logits = torch.tensor([[0.0, 3.0, 1.0], [-50.0, -60.0, -55.0]])
    for temperature in (1e-38, 1e-3):
        assert sample(logits, temperature).flatten().tolist() == [1, 0]
