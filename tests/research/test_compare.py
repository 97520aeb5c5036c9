"""The equal-budget comparison (rnnlab.compare, scripts/compare_cells.py): every
configuration at the reference's parameter count, trained for the same wall time, with its
best validation value, steps and wall time in the table, and the gradient-flow figure."""

import csv
import subprocess
import sys

import pytest

from helpers import CONF_DIR, ROOT, TINY
from rnnlab import compare
from rnnlab.errors import ConfigError
from rnnlab.benchmark.e2e import compose_train_config

PNG = b"\x89PNG\r\n\x1a\n"
QUIET = ["trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
         "trainer.enable_model_summary=false", "callbacks.hidden_state_monitor=null", "trainer.accelerator=cpu"]


@pytest.mark.parametrize("cell", ["gru", "min_lstm", "indrnn", "ln_lstm"])
def test_hidden_size_is_matched_to_the_parameter_budget(cell, tmp_path):
    cfg = compose_train_config(CONF_DIR, ["model=classifier", f"model.net.cell={cell}", *TINY["synthetic"]])
    cfg.model.net.input_size, cfg.model.net.num_classes = 10, 2
    size, count = compare.match_parameters(cfg, 20_000)
    assert compare.parameter_count(cfg) == count
    for other in (size - 1, size + 1):  # no neighbouring size is closer
        cfg.model.net.hidden_size = other
        assert abs(compare.parameter_count(cfg) - 20_000) >= abs(count - 20_000)


def test_compare_trains_each_configuration_for_the_budget(tmp_path):
    configs = {"gru": ["model.net.cell=gru"], "min_gru": ["model.net.cell=min_gru"]}
    rows = compare.run(task="seed", configs=configs, reference="gru", seconds=4, out=tmp_path, conf_dir=CONF_DIR,
                       overrides=[*QUIET, *TINY["synthetic"]])
    with (tmp_path / "compare.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["config"] for r in table] == [r.config for r in rows] and {r.config for r in rows} == set(configs)
    reference = next(r for r in rows if r.config == "gru")
    assert reference.hidden_size == 64  # its own configured size
    for r in rows:
        assert abs(r.parameters - reference.parameters) <= 0.05 * reference.parameters
        assert r.steps > 0 and 0.5 <= r.best <= 1.0
        assert r.wall_s >= 4  # at least the budget (plus testing)
    assert rows[0].best >= rows[1].best  # best first
    assert (tmp_path / "gradient_flow.png").read_bytes().startswith(PNG)
    assert "| config | cell | hidden |" in (tmp_path / "compare.md").read_text()


def test_only_trains_the_named_configurations_at_the_references_parameter_count(tmp_path):
    configs = {"gru": ["model.net.cell=gru"], "lstm": ["model.net.cell=lstm"]}
    rows = compare.run(task="seed", configs=configs, reference="gru", seconds=1, out=tmp_path, conf_dir=CONF_DIR,
                       overrides=[*QUIET, *TINY["synthetic"]], only=["lstm"], gradient_flow=False)
    (row,) = rows
    gru = compare.parameter_count(compare._sized_config(CONF_DIR, [*QUIET, *TINY["synthetic"], "model.net.cell=gru"],
                                                        tmp_path / "ref"))
    assert row.config == "lstm" and row.hidden_size != 64 and abs(row.parameters - gru) <= 0.05 * gru
    with pytest.raises(ConfigError, match=r"only: expected names among the configs \['gru', 'lstm'\], got \['rnn'\]"):
        compare.run(task="seed", configs=configs, reference="gru", seconds=1, out=tmp_path, conf_dir=CONF_DIR,
                    only=["rnn"])


@pytest.mark.subprocess
def test_compare_script_refuses_an_unknown_reference(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/compare_cells.py", "reference=transformer", f"out={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1
    assert "reference: expected one of the configs" in proc.stderr + proc.stdout
