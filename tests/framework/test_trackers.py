"""MLflow and W&B runs, read back with the trackers' own clients: parameters, metrics,
checkpoint paths, a resumed run continuing its tracker run, a sweep as one group of runs,
and the one-line refusal when a tracker's package is missing."""

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_train
from helpers import ROOT
from rnnlab.errors import ConfigError
from rnnlab.train import train

mlflow = pytest.importorskip("mlflow")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

SHORT = ["model.net.hidden_size=8", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2"]


def mlflow_runs(store: Path, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time"])


def test_an_mlflow_run_holds_the_config_metrics_and_checkpoint_paths(tmp_path):
    cfg, metrics = tiny_train(tmp_path, "logger=mlflow", "trainer.max_epochs=2", *SHORT)
    client, runs = mlflow_runs(tmp_path / "mlflow.db", "train")
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["model.net.hidden_size"] == "8" and run.data.params["seed"] == str(cfg.seed)
    assert run.data.metrics["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # one value per epoch
    best, last = run.data.tags["checkpoint.best"], run.data.tags["checkpoint.last"]
    assert Path(best).is_file() and Path(best).parent == tmp_path / "checkpoints"
    assert last == str(tmp_path / "checkpoints" / "last.ckpt")
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"mlflow": run.info.run_id}


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    common = ["logger=mlflow", *SHORT, "model.scheduler=null"]
    tiny_train(tmp_path, *common, "trainer.max_epochs=1", "test=false")
    tiny_train(tmp_path, *common, "trainer.max_epochs=2", "ckpt_path=last")
    client, runs = mlflow_runs(tmp_path / "mlflow.db", "train")
    assert len(runs) == 1  # not a second run
    history = client.get_metric_history(runs[0].info.run_id, "val/acc")
    assert sorted(m.step for m in history) == sorted({m.step for m in history}) and len(history) == 2
    assert "test/acc" in runs[0].data.metrics
    # MLflow parameters cannot change: the run keeps max_epochs=1, the resume's value is a tag.
    assert runs[0].data.params["trainer.max_epochs"] == "1"
    assert runs[0].data.tags["resumed.trainer.max_epochs"] == "2"


def wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run, parsed with wandb's own protobuf definitions from
    its transaction log (LevelDB log format: 7-byte file header, 32 KiB blocks of chunks)."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, records, pos, chunks = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_an_offline_wandb_run_holds_the_config_metrics_and_checkpoint_paths(tmp_path):
    _, metrics = tiny_train(tmp_path, "logger=wandb", "trainer.max_epochs=2", *SHORT)
    records = wandb_records(tmp_path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "rnnlab" and run.run_group == "train"
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update(_items(r.config.update))
    assert config["model.net.hidden_size"] == 8
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["val/acc_best"] for h in history if "val/acc_best" in h][-1] == pytest.approx(metrics["val/acc_best"])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["checkpoint.last"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"wandb": run.run_id}


@pytest.mark.slow  # a two-job sweep with every logger, about 16 s
@pytest.mark.subprocess
def test_a_sweep_is_one_tracker_group_with_a_run_per_job_and_its_swept_values(tmp_path):
    # logger=many: TensorBoard, CSV, MLflow and W&B together; the basic launcher runs both
    # jobs in one process, where W&B keeps one run open at a time.
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "-m", "logger=many", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1",
         "data.num_train=256", "data.num_val=64", "data.num_test=64", "trainer.enable_progress_bar=false",
         "model.net.hidden_size=8,16", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "train/sweep")
    assert [r.info.run_name for r in runs] == ["sweep/0", "sweep/1"]
    assert [r.data.params["model.net.hidden_size"] for r in runs] == ["8", "16"]
    for run, job in zip(runs, ("0", "1")):
        result = json.loads((sweep_dir / job / "result.json").read_text())
        assert run.data.metrics["val/acc_best"] == pytest.approx(result["value"])
    wandb_runs = [[r.run for r in wandb_records(sweep_dir / job) if r.WhichOneof("record_type") == "run"][0]
                  for job in ("0", "1")]
    assert [r.run_group for r in wandb_runs] == ["train/sweep", "train/sweep"]
    assert [r.display_name for r in wandb_runs] == ["sweep/0", "sweep/1"]
    assert wandb_runs[0].run_id != wandb_runs[1].run_id
    assert all(list((sweep_dir / job / "tensorboard").glob("events.out.tfevents.*")) for job in ("0", "1"))


@pytest.mark.parametrize("logger, package", [("mlflow", "mlflow"), ("wandb", "wandb"), ("many", "mlflow")])
def test_a_missing_tracker_package_is_refused_in_one_line_naming_the_extra(tmp_path, train_config, monkeypatch,
                                                                        logger, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    cfg = train_config(f"logger={logger}", *SHORT)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (f"logger.{package}: needs the {package} package, which is not installed: "
                              f"pip install 'rnnlab[{package}]'")
    assert not (tmp_path / "checkpoints").exists()
