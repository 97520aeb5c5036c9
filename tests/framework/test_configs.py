"""Every config composes, every model instantiates with its data, and fast_dev_run works."""

import csv

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rnnlab.checkpoints import load_checkpoint
from rnnlab.data import CharDataModule, SyntheticSequenceDataModule, TaggingDataModule
from rnnlab.models import CharRNN, SequenceClassifier, SequenceTagger
from rnnlab.tasks import ClassificationTask, LanguageModelTask, TaggingTask
from rnnlab.train import fill_model_from_data, instantiate_group, train

from helpers import CONF_DIR, QUIET, TINY, compose_config

MODELS = {
    "classifier": ("synthetic", ClassificationTask, SequenceClassifier, SyntheticSequenceDataModule),
    "tagger": ("tagging", TaggingTask, SequenceTagger, TaggingDataModule),
    "birnn_tagger": ("tagging", TaggingTask, SequenceTagger, TaggingDataModule),
    "char_rnn": ("chars", LanguageModelTask, CharRNN, CharDataModule),
}


def test_every_model_config_is_listed():
    assert sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")) == sorted(MODELS)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_selects_its_data_and_everything_instantiates(model, train_config):
    data_name, task_cls, net_cls, data_cls = MODELS[model]
    cfg = train_config(f"model={model}", data=data_name)
    assert cfg.data._target_.endswith(data_cls.__name__)
    OmegaConf.resolve(cfg.model)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    fill_model_from_data(cfg.model, datamodule)
    task = instantiate(cfg.model)
    assert isinstance(task, task_cls) and isinstance(task.net, net_cls)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks),
                          logger=instantiate_group(cfg.logger))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert {type(c).__name__ for c in trainer.callbacks} >= {"ModelCheckpoint", "LearningRateMonitor",
                                                             "ParameterHistograms"}
    checkpoint = next(c for c in trainer.callbacks if type(c).__name__ == "ModelCheckpoint")
    assert (checkpoint.monitor, checkpoint.mode) == (task.monitor, task.monitor_mode)


def test_data_override_beats_the_models_choice(train_config):
    cfg = train_config("model=tagger", "data=synthetic")
    assert cfg.data._target_.endswith("SyntheticSequenceDataModule")


# Keys an experiment requires from the command line (${rnnlab.required:...}).
REQUIRED = {"shakespeare": ["data.path=corpus.txt"], "shakespeare_10min": ["data.path=corpus.txt"]}


@pytest.mark.parametrize("config_name,overrides", [
    ("eval", ["ckpt_path=x.ckpt"]),
    ("generate", ["ckpt_path=x.ckpt"]),
    *[("train", [f"debug={d}"]) for d in ("fdr", "overfit", "limit", "profiler")],
    *[("train", [f"trainer={t}"]) for t in ("cpu", "gpu")],
    *[("train", [f"logger={lg}"]) for lg in ("csv", "tensorboard", "mlflow", "wandb", "many")],
    *[("train", [f"callbacks={c}"]) for c in ("none", "with_early_stopping", "[default,budget_schedule]",
                                             "[default,ema]")],
    *[("train", [f"hydra/launcher={launcher}"]) for launcher in ("joblib", "slurm", "submitit_local")],
    *[("train", [f"experiment={p.stem}", *REQUIRED.get(p.stem, [])])
      for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))],
])
def test_every_config_composes_and_resolves(config_name, overrides, tmp_path):
    cfg = compose_config(config_name, overrides, tmp_path)
    for key in cfg:
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)  # raises on any broken interpolation
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].startswith(("hydra._internal", "hydra_plugins"))


def test_the_ten_minute_shakespeare_experiment_trains_the_comparisons_row_at_its_matched_size(tmp_path):
    """experiment=shakespeare_10min is conf/compare.yaml's gru_cosine_d25_wd20 row as
    compare_cells.py trains it: the same model, optimiser, schedule, data and time budget, and
    the hidden size that gives the reference LSTM's parameter count at tinyshakespeare's 65
    characters."""
    from rnnlab.compare import match_parameters, parameter_count

    compare = OmegaConf.load(CONF_DIR / "compare.yaml")
    shared = ["data.path=corpus.txt", "model.net.vocab_size=65"]
    budget = ["model=char_rnn", "trainer.max_epochs=-1", "+trainer.max_time=00:00:10:00", *shared]
    row = compose_config("train", [*budget, *compare.shakespeare_configs.gru_cosine_d25_wd20], tmp_path)
    reference = compose_config("train", [*budget, *compare.shakespeare_configs[compare.reference]], tmp_path)
    experiment = compose_config("train", ["experiment=shakespeare_10min", *shared], tmp_path)

    assert match_parameters(row, parameter_count(reference)) == (297, 877_999)
    assert parameter_count(experiment) == 877_999
    mine, theirs = (OmegaConf.to_container(c.model, resolve=True) for c in (experiment, row))
    assert mine.pop("sample_prompt") == "ROMEO:" and theirs.pop("sample_prompt") == "\n"
    assert mine == theirs and mine["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert experiment.data == row.data and experiment.callbacks.budget_schedule == row.callbacks.budget_schedule
    for key in ("max_time", "max_epochs", "precision", "gradient_clip_val"):
        assert experiment.trainer[key] == row.trainer[key], key


@pytest.mark.parametrize("search", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")))
def test_every_search_composes_and_searches_keys_that_exist(search, tmp_path):
    """A misspelt searched key would be added silently by Hydra's override (or refused at the
    first trial); every one must name a key the composed config has."""
    cfg = compose_config("train", [f"hparams_search={search}"], tmp_path)
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, default="__missing__") != "__missing__", f"{search}: {key}"


def test_configs_mirror_constructors():
    """Each model/data config holds _target_ plus constructor arguments and nothing else."""
    import inspect

    from hydra.utils import get_class

    for group in ("model", "data"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            node = OmegaConf.load(path)
            for sub in ([node, node.net] if group == "model" and "net" in node else [node]):
                if "_target_" not in sub:
                    continue
                params = inspect.signature(get_class(sub._target_).__init__).parameters
                keys = {k for k in sub if not k.startswith("_")} - {"defaults"}
                assert keys <= set(params), f"{path.name}: unknown keys {keys - set(params)}"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_fast_dev_run(model, train_config):
    cfg = train_config(f"model={model}", "debug=fdr", data=MODELS[model][0])
    metrics, _ = train(cfg)
    assert "test/loss" in metrics
    assert "train/loss" in metrics  # logged on its one step, though log_every_n_steps is 20


@pytest.mark.parametrize("debug", ["limit", "overfit", "profiler"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_debug_mode_runs_for_every_model(model, debug, train_config):
    # debug=overfit's 30 epochs cut to 2; everything else as the debug config sets it.
    epochs = ["trainer.max_epochs=2"] if debug == "overfit" else []
    cfg = train_config(f"model={model}", f"debug={debug}", "model.net.hidden_size=8", *epochs, data=MODELS[model][0])
    metrics, _ = train(cfg)
    assert "test/loss" in metrics and metrics["time/wall_s"] > 0


SHORT = ["model.net.hidden_size=8", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2"]


@pytest.mark.parametrize("logger", ["csv", "many"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_logger_set_writes_its_files_for_every_model(model, logger, train_config, tmp_path):
    cfg = train_config(f"model={model}", f"logger={logger}", "trainer.max_epochs=2", *SHORT, data=MODELS[model][0])
    metrics, _ = train(cfg)
    monitor = MODELS[model][1].monitor
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r[monitor]) for r in rows if r.get(monitor)][-1] == pytest.approx(metrics[monitor])
    assert any(r.get("test/loss") for r in rows)
    assert bool(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == (logger == "many")


@pytest.mark.parametrize("callbacks", ["none", "with_early_stopping", "[default,budget_schedule]", "[default,ema]"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_callback_set_runs_for_every_model(model, callbacks, train_config, tmp_path):
    # Early stopping that no epoch can satisfy (an improvement of 10 units): it stops the
    # run after its first epoch without improvement, long before max_epochs.
    extra = (["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=10"]
             if callbacks == "with_early_stopping" else ["model.scheduler=null"] if "budget" in callbacks else [])
    quiet = [o for o in QUIET if not o.startswith("callbacks.")]  # the bar and summary go with the trainer flags
    cfg = compose_config("train", [*quiet, *TINY[MODELS[model][0]], f"model={model}", f"callbacks={callbacks}",
                                   "trainer.max_epochs=5", *SHORT, *extra], tmp_path)
    metrics, _ = train(cfg)
    assert "test/loss" in metrics
    if callbacks == "none":
        assert not (tmp_path / "checkpoints").exists()
    elif callbacks == "with_early_stopping":
        assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 1  # stopped after 2 of 5
    elif callbacks == "[default,ema]":  # the weights' average written beside the trained weights
        checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
        assert int(checkpoint["averaging_state"]["n_averaged"]) == checkpoint["global_step"] > 1
        assert any(not torch.equal(value, checkpoint["current_model_state"][key])
                   for key, value in checkpoint["state_dict"].items() if key.startswith("net."))
    else:  # the learning rate annealed to near zero by the last of the 5 epochs
        (group,) = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["optimizer_states"][0]["param_groups"]
        assert group["initial_lr"] == cfg.model.optimizer.lr and group["lr"] < 0.05 * group["initial_lr"]


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm", "min_gru", "min_lstm", "indrnn", "ln_lstm"])
def test_mixed_precision_training_runs_for_every_cell(cell, train_config):
    cfg = train_config("trainer.precision=bf16-mixed", f"model.net.cell={cell}", "trainer.max_epochs=1")
    metrics, _ = train(cfg)
    assert 0 < metrics["train/loss_epoch"] < 2 and metrics["test/acc"] > 0


def test_unknown_optimized_metric_is_a_clear_error(train_config):
    cfg = train_config("debug=fdr", "optimized_metric=val/nonexistent")
    with pytest.raises(ValueError, match=r"optimized_metric='val/nonexistent' was not logged; logged metrics: \[.*'test/acc'"):
        train(cfg)


def test_switching_off_the_progress_bar_and_summary_needs_no_callback_override(tmp_path):
    # trainer.enable_progress_bar=false alone: the configured RichProgressBar is dropped
    # instead of Lightning refusing the combination.
    cfg = compose_config("train", ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                   "trainer.enable_model_summary=false", "trainer.fast_dev_run=true",
                                   "data.num_train=128",
                                   "data.num_val=64", "data.num_test=64"], tmp_path)
    assert cfg.callbacks.rich_progress_bar is not None
    metrics, _ = train(cfg)
    assert "test/acc" in metrics
