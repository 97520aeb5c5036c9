"""Sweeps run as a user runs them: subprocesses of scripts/train.py -m, then their summaries."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import ROOT, compose_config

pytestmark = pytest.mark.subprocess  # every test here runs scripts/train.py -m as a user would
from rnnlab.checkpoints import load_checkpoint
from rnnlab.eval import evaluate

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
    assert rows[("cpu", "0")]["error"] == "ConfigError: model.net.hidden_size: expected hidden_size >= 1, got 0"
    if not __import__("torch").cuda.is_available():
        for size in ("8", "0"):
            assert rows[("gpu", size)]["status"] == "skipped"
            assert rows[("gpu", size)]["error"] == ("trainer.accelerator=gpu but no CUDA GPU is available "
                                                    "on this machine")
    assert [r["status"] for r in summary_rows(sweep_dir)][0] == "ok"  # finished jobs first


def test_fail_fast_stops_the_sweep_in_one_line_and_summarizes_what_ran(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "model.net.hidden_size=0,8", "fail_fast=true", expect_ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "Error: job 0 failed and fail_fast=true stopped the sweep (1 later job skipped): ConfigError: "
        f"model.net.hidden_size: expected hidden_size >= 1, got 0; see {sweep_dir / 'summary.md'}")
    later = json.loads((sweep_dir / "1" / "result.json").read_text())
    assert later["status"] == "skipped" and later["error"] == "job 0 failed and fail_fast=true"
    assert not (sweep_dir / "1" / "checkpoints").exists()  # it did not train
    assert [r["status"] for r in summary_rows(sweep_dir)] == ["failed", "skipped"]


def test_a_sweep_in_which_every_job_failed_exits_1_after_its_summary(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "model.net.hidden_size=0,-1", expect_ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("Error: no job of the sweep finished (2 failed); "
                                                            "first error: ConfigError: model.net.hidden_size: ")
    assert [r["status"] for r in summary_rows(sweep_dir)] == ["failed", "failed"]


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


def test_two_process_cpu_ddp_splits_every_epoch_between_its_ranks(tmp_path):
    """Test what each rank read, not only the accuracy: disjoint shards of each epoch's order
    that together are what one process reads, in half the steps, and test metrics synced
    over both ranks' shards of the test set."""
    common = ["model=classifier", "data.num_train=2000", "data.num_val=500", "data.num_test=999",
              "trainer.max_epochs=2", "model.net.hidden_size=16", "trainer.enable_progress_bar=false",
              "+callbacks.reads._target_=probes.RecordReads"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for name, extra in (("ddp", ["trainer=ddp_cpu"]), ("single", [])):
        run_dir = tmp_path / name
        proc = subprocess.run([sys.executable, "scripts/train.py", *extra, *common, f"hydra.run.dir={run_dir}",
                               f"+callbacks.reads.out_dir={run_dir / 'reads'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = run_dir
    ddp = runs["ddp"]
    # One run directory: the second rank wrote into the first one's, not a new timestamped one.
    assert sorted(p.name for p in ddp.iterdir()) == [".hydra", "checkpoints", "reads", "result.json", "tensorboard",
                                                     "train.log", "train_ddp_process_1.log"]
    assert len(list((ddp / "checkpoints").iterdir())) == 2
    # Each epoch: 1000 of the 2000 sequences per rank, 16 steps of 64 instead of 32.
    assert load_checkpoint(ddp / "checkpoints" / "last.ckpt")["global_step"] == 2 * 16
    assert load_checkpoint(runs["single"] / "checkpoints" / "last.ckpt")["global_step"] == 2 * 32
    (single,) = [torch.load(runs["single"] / "reads" / "rank0.pt")]
    ranks = [torch.load(ddp / "reads" / f"rank{r}.pt") for r in range(2)]
    for epoch in range(2):
        assert [len(r[epoch]) for r in ranks] == [1000, 1000]
        assert torch.equal(ranks[0][epoch], single[epoch][0::2]) and torch.equal(ranks[1][epoch], single[epoch][1::2])
    assert not torch.equal(single[0], single[1])  # each epoch its own order
    # The test metrics cover all 999 test sequences, the ranks' 500 and 499 synced as metric
    # states: the values of the best checkpoint evaluated on the whole test set in one process
    # (a mean of the two ranks' values would differ, in macro F1 above all).
    recorded = json.loads((ddp / "result.json").read_text())["metrics"]
    best = next(p for p in (ddp / "checkpoints").iterdir() if p.name != "last.ckpt")
    cfg = compose_config("eval", [f"ckpt_path={best}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"],
                         tmp_path / "eval")
    whole = evaluate(cfg)
    for name in ("test/acc", "test/f1", "test/loss"):
        assert whole[name] == pytest.approx(recorded[name], abs=1e-6), name


def test_ddp_inside_a_local_multirun_is_refused_clearly(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "trainer=ddp_cpu", "model.net.hidden_size=8", expect_ok=False)
    (row,) = summary_rows(sweep_dir)
    assert row["status"] == "failed" and "use trainer.strategy=ddp_spawn" in row["error"]
    assert proc.returncode == 1  # no job finished
