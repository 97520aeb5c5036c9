"""A user's own LightningDataModule: the task's batch contract, sizes from the data."""

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from helpers import QUIET, compose_config
from rnnlab.checkpoints import load_checkpoint
from rnnlab.errors import ConfigError
from rnnlab.train import train


def user_config(tmp_path, model, data_target, *overrides):
    cfg = compose_config("train", [*QUIET, f"model={model}", "trainer.max_epochs=3", *overrides], tmp_path)
    with open_dict(cfg):
        cfg.data = OmegaConf.create({"_target_": data_target, "num_sequences": 600, "batch_size": 32})
    return cfg


@pytest.mark.parametrize("model,data,sizes,metric,better_than", [
    ("classifier", "userdata.Series", {"input_size": 12, "num_classes": 9}, "test/acc", 0.5),  # chance 0.11
    ("birnn_tagger", "userdata.Steps", {"input_size": 5, "num_tags": 5}, "test/acc", 0.6),      # chance 0.2
    ("char_rnn", "userdata.Counting", {"vocab_size": 7}, "test/bpc", -1.5),                  # uniform 2.81
])
def test_every_task_trains_on_a_users_data_module_with_the_sizes_it_gives(model, data, sizes, metric, better_than,
                                                                          tmp_path):
    cfg = user_config(tmp_path, model, data, "model.net.hidden_size=32", "model.optimizer.lr=0.01")
    assert all(cfg.model.net[key] is None for key in sizes)  # the model config leaves them to the data
    metrics, _ = train(cfg)
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["hyper_parameters"]["net"]
    assert {key: net[key] for key in sizes} == sizes
    value = metrics[metric]
    assert (value > better_than) if better_than > 0 else (value < -better_than), (metric, value)


def test_a_size_set_in_the_config_must_agree_with_the_data(tmp_path):
    cfg = user_config(tmp_path, "classifier", "userdata.Series", "model.net.num_classes=3")
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert str(raised.value) == ("model: does not match the data: model.net.num_classes: config 3, data 9; "
                                 "set these keys to null to take them from the data")


def test_a_data_module_that_does_not_give_the_models_sizes_is_named(tmp_path):
    cfg = user_config(tmp_path, "classifier", "userdata.SeriesWithoutSettings")
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert str(raised.value) == (
        "model: net.input_size, net.num_classes are null and the data (userdata.SeriesWithoutSettings) does not "
        "set them: it defines no model_settings(); return {'net.input_size': ..., 'net.num_classes': ...} from "
        "model_settings(), or set model.net.input_size=<value>, model.net.num_classes=<value>")
    # Setting them by hand is the other way.
    train(user_config(tmp_path / "by_hand", "classifier", "userdata.SeriesWithoutSettings",
                      "model.net.input_size=12", "model.net.num_classes=9", "trainer.max_epochs=1"))


def test_a_data_module_whose_batches_are_not_the_tasks_is_refused_before_training(tmp_path):
    cfg = user_config(tmp_path, "classifier", "userdata.FloatLabels")
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert str(raised.value) == (
        "data: model=classifier (ClassificationTask) trains on batches "
        "(x (B, T, D) float, y (B,) int64[, lengths (B,) int]), got "
        "((32, 29, 12) float32, (32,) float32, (32,) int64) from userdata.FloatLabels's val_dataloader(): "
        "y is float32, not int64")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("batch,problem", [
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long)), None),
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.tensor([3, 1], dtype=torch.int32)), None),
    ({"x": 1}, "a batch is a tuple of 2 or 3 tensors, got a dict"),
    ((torch.zeros(2, 3, 4),), "a batch is a tuple of 2 or 3 tensors, got 1"),
    ((torch.zeros(2, 3, 4), [0, 1]), "y is a list, not a tensor"),
    ((torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "x is int64, not a float tensor"),
    ((torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long)), "y has B = 3, x has B = 2"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2)),
     "lengths is float32, not an integer tensor"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)),
     "lengths has 2 dimensions, not 1 (B,)"),
])
def test_the_classification_contract_names_what_a_batch_lacks(batch, problem):
    from rnnlab.tasks import ClassificationTask

    assert ClassificationTask.batch_problem(batch) == problem


def test_a_tagger_needs_features_or_token_ids_from_its_data(tmp_path):
    """The tagger takes input_size (features) or vocab_size (token ids): data that gives neither is
    named with both; data that gives one leaves the other null."""
    cfg = user_config(tmp_path, "tagger", "userdata.StepsWithoutSettings")
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert str(raised.value).startswith(
        "model: net.input_size (features) or net.vocab_size (token ids), net.num_tags are null and the data "
        "(userdata.StepsWithoutSettings) does not set them: it defines no model_settings(); return "
        "{'net.input_size': ..., 'net.num_tags': ...} from model_settings(), or set model.net.input_size=<value>, "
        "model.net.num_tags=<value>")
