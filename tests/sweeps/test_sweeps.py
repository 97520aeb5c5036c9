"""Sweeps run as a user runs them: subprocesses of scripts/train.py -m, then their summaries."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import ROOT
from rnnlab.sweeps import summarize

TINY = ["model=classifier", "data.num_train=256", "data.num_val=64", "data.num_test=64", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]


def sweep(tmp_path: Path, *overrides: str, expect_ok: bool = True) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "scripts/train.py", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dir, proc


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_grid_sweep_writes_one_directory_per_job_and_a_summary(tmp_path):
    sweep_dir, _ = sweep(tmp_path, "model.net.hidden_size=16,32", "model.net.num_layers=1,2")
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").exists()
        assert list((sweep_dir / job / "tensorboard").glob("events.out.tfevents.*"))
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert {(r["model.net.hidden_size"], r["model.net.num_layers"]) for r in rows} == {
        ("16", "1"), ("16", "2"), ("32", "1"), ("32", "2")}
    values = [float(r["val/acc_best"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first
    png = (sweep_dir / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| job | model.net.hidden_size | model.net.num_layers | status |" in (sweep_dir / "summary.md").read_text()
    # The same summary again, from the command line.
    (sweep_dir / "summary.csv").unlink()
    subprocess.run([sys.executable, "scripts/summarize.py", str(sweep_dir)], cwd=ROOT, check=True, timeout=120)
    assert summary_rows(sweep_dir) == rows


def test_failed_and_skipped_jobs_do_not_stop_the_sweep(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "trainer=cpu,gpu", "model.net.hidden_size=8,0")
    rows = {(r["trainer"], r["model.net.hidden_size"]): r for r in summary_rows(sweep_dir)}
    assert rows[("cpu", "8")]["status"] == "ok"
    assert rows[("cpu", "0")]["status"] == "failed"
    assert rows[("cpu", "0")]["error"] == "ConfigError: model.net: expected hidden_size >= 1, got 0"
    if not __import__("torch").cuda.is_available():
        for size in ("8", "0"):
            assert rows[("gpu", size)]["status"] == "skipped"
            assert rows[("gpu", size)]["error"] == ("trainer.accelerator=gpu but no CUDA GPU is available "
                                                    "on this machine")
    assert [r["status"] for r in summary_rows(sweep_dir)][0] == "ok"  # finished jobs first


def test_fail_fast_stops_the_sweep(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "model.net.hidden_size=0,8", "fail_fast=true", expect_ok=False)
    assert proc.returncode != 0
    assert "expected hidden_size >= 1, got 0" in proc.stderr
    later = json.loads((sweep_dir / "1" / "result.json").read_text())
    assert later["status"] == "skipped" and later["error"] == "job 0 failed and fail_fast=true"
    assert not (sweep_dir / "1" / "checkpoints").exists()  # it did not train


def test_optuna_search_best_value_matches_the_summary(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "hparams_search=classifier_optuna", "hydra.sweeper.n_trials=3")
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    rows = summary_rows(sweep_dir)
    assert len(rows) == 3
    assert float(rows[0]["val/acc_best"]) == pytest.approx(best.best_value)
    for key, value in best.best_params.items():
        assert float(rows[0][key]) == pytest.approx(float(value))
    assert "Best value" in proc.stderr + proc.stdout


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_and_cluster_launchers_run_a_two_job_sweep(tmp_path, launcher):
    extra = ["hydra.launcher.timeout_min=10"] if launcher == "submitit_local" else []
    sweep_dir, _ = sweep(tmp_path, f"hydra/launcher={launcher}", "model.net.hidden_size=8,16", *extra)
    rows = summary_rows(sweep_dir)
    assert sorted(r["model.net.hidden_size"] for r in rows) == ["16", "8"]
    assert {r["status"] for r in rows} == {"ok"}
    if launcher == "joblib":
        results = [json.loads((sweep_dir / j / "result.json").read_text()) for j in ("0", "1")]
        assert all(r["status"] == "ok" for r in results)


def test_two_process_cpu_ddp_trains_and_tests_the_classifier(tmp_path):
    run_dir = tmp_path / "run"
    common = ["model=classifier", "data.num_train=4000", "data.num_test=1000", "trainer.max_epochs=3",
              "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
    proc = subprocess.run([sys.executable, "scripts/train.py", "trainer=ddp_cpu", *common, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run_dir / "result.json").read_text())
    assert ddp["status"] == "ok" and ddp["metrics"]["test/acc"] > 0.85
    # One run directory: the second rank wrote into the first one's, not a new timestamped one.
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints", "result.json", "tensorboard",
                                                         "train.log", "train_ddp_process_1.log"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run_dir / "checkpoints").iterdir())) == 2
    single_dir = tmp_path / "single"
    subprocess.run([sys.executable, "scripts/train.py", *common, f"hydra.run.dir={single_dir}"],
                   cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    single = json.loads((single_dir / "result.json").read_text())
    assert abs(ddp["metrics"]["test/acc"] - single["metrics"]["test/acc"]) < 0.05


def test_ddp_inside_a_local_multirun_is_refused_clearly(tmp_path):
    sweep_dir, _ = sweep(tmp_path, "trainer=ddp_cpu", "model.net.hidden_size=8")
    (row,) = summary_rows(sweep_dir)
    assert row["status"] == "failed" and "use trainer.strategy=ddp_spawn" in row["error"]


def test_summarize_refuses_a_directory_without_jobs(tmp_path):
    with pytest.raises(ValueError, match="found none"):
        summarize(tmp_path)
