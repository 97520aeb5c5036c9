"""Replicates in sweep summaries: jobs that differ only in seed or data.fold are one
configuration, summarised by mean, sample standard deviation and count, best mean first."""

import csv
import json
import statistics
import subprocess
import sys

import pytest

from datafiles import make_sequences, write_sequences
from helpers import ROOT
from rnnlab.summarize import summarize


def write_jobs(sweep_dir, jobs, metric="val/acc_best", mode="max"):
    for number, (overrides, status, value) in enumerate(jobs):
        job = sweep_dir / str(number)
        job.mkdir(parents=True)
        metrics = {} if value is None else {metric: value, "test/acc": value - 0.125}
        job.joinpath("result.json").write_text(json.dumps(
            {"overrides": overrides, "optimized_metric": metric, "mode": mode, "status": status, "error": "",
             "value": value, "metrics": metrics, "wall_time_s": 1.0}))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["max", "min"])
def test_each_configuration_gets_mean_sd_and_count_over_its_finished_replicates(tmp_path, mode):
    values = {8: [0.5, 0.75, None], 16: [0.25, 0.375, 0.125]}  # hidden 8: one replicate failed
    jobs = [([f"model.net.hidden_size={h}", f"seed={s}"], "ok" if v is not None else "failed", v)
            for h, vs in values.items() for s, v in enumerate(vs)]
    write_jobs(tmp_path, jobs, mode=mode)
    summarize(tmp_path)

    rows = read_csv(tmp_path / "summary.csv")
    assert len(rows) == 6 + 2
    configs = {r["model.net.hidden_size"]: r for r in rows if r["job"].startswith("mean of")}
    assert configs["8"]["job"] == "mean of 0 1 2" and configs["8"]["status"] == "2 of 3 ok"
    assert float(configs["8"]["val/acc_best"]) == statistics.fmean([0.5, 0.75])
    assert float(configs["8"]["val/acc_best std"]) == statistics.stdev([0.5, 0.75])
    assert configs["8"]["replicates"] == "2" and configs["16"]["replicates"] == "3"
    assert float(configs["16"]["val/acc_best std"]) == statistics.stdev([0.25, 0.375, 0.125])
    assert float(configs["16"]["test/acc"]) == statistics.fmean([0.125, 0.25, 0.0])
    # Best mean first: hidden 8 (0.625) when higher is better, hidden 16 (0.25) when lower is.
    order = [r["model.net.hidden_size"] for r in rows if r["job"].startswith("mean of")]
    assert order == (["8", "16"] if mode == "max" else ["16", "8"])

    md = (tmp_path / "summary.md").read_text()
    assert "## Configurations: mean ± sample standard deviation over replicates (seed)" in md
    assert f"| 8 | 2 of 3 | 0.6250 ± {statistics.stdev([0.5, 0.75]):.4f} |" in md
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_a_sweep_without_replicates_keeps_one_row_per_job(tmp_path):
    write_jobs(tmp_path, [(["model.net.hidden_size=8"], "ok", 0.5), (["model.net.hidden_size=16"], "ok", 0.6)])
    summarize(tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["job"] for r in rows] == ["1", "0"] and "replicates" not in rows[0]
    assert "## Configurations" not in (tmp_path / "summary.md").read_text()


@pytest.mark.slow  # five training jobs; the folds and the summary are tested in process by default
@pytest.mark.subprocess
def test_a_five_fold_cross_validation_is_one_sweep_with_one_configuration_row(tmp_path):
    sequences, labels = make_sequences(150)
    path = write_sequences(tmp_path / "train", sequences, labels, "npz")
    sweep_dir = tmp_path / "cv"
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "-m", "model=classifier", "data=sequences", f"data.path={path}",
         "data.num_folds=5", "data.fold=0,1,2,3,4", "model.net.hidden_size=16", "trainer.max_epochs=2", "threads=1",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.rich_progress_bar=null",
         "callbacks.rich_model_summary=null", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(sweep_dir / "summary.csv")
    jobs = [r for r in rows if not r["job"].startswith("mean of")]
    (config,) = [r for r in rows if r["job"].startswith("mean of")]
    assert sorted(r["data.fold"] for r in jobs) == ["0", "1", "2", "3", "4"]
    values = [float(r["val/acc_best"]) for r in jobs]
    assert config["replicates"] == "5" and config["data.fold"] == "(replicates)"
    assert float(config["val/acc_best"]) == pytest.approx(statistics.fmean(values))
    assert float(config["val/acc_best std"]) == pytest.approx(statistics.stdev(values))
