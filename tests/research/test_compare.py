"""The equal-budget comparison (rnnlab.compare, scripts/compare_cells.py): every
configuration at the reference's parameter count, trained for the same wall time, with its
best validation value, steps and wall time in the table, and the gradient-flow figure."""

import csv
import json
import subprocess
import sys
from dataclasses import asdict

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF_DIR, ROOT, TINY, carried_bpc
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


def test_the_text_comparison_reports_the_best_checkpoint_read_as_windows_and_as_carried_streams(tmp_path):
    """For a character model the table gives the best checkpoint's val/bpc on windows from a
    zero state and with the state carried through the validation text, whichever way it was
    trained: the training's own best equals the matching column, and the carried value is the
    streams' loss computed independently."""
    from rnnlab.checkpoints import load_task
    from rnnlab.data import CharDataModule

    text = tmp_path / "text.txt"
    text.write_text("".join(f"the {w} sat on the mat and the {w} ran. " for w in ("cat", "dog", "hen", "fox") * 300))
    configs = {"windows": ["model.net.cell=gru"], "streams": ["model.net.cell=gru", "data.stateful=true"]}
    base = [*QUIET, f"data.path={text}", "data.seq_len=24", "data.batch_size=8", "data.windows_per_epoch=64",
            "model.net.num_layers=1", "model.net.hidden_size=24", "model.net.embed_dim=8",
            "model.sample_max_new_tokens=10", "model.sample_prompt=the"]
    rows = compare.run(task="shakespeare", configs=configs, reference="windows", seconds=3, out=tmp_path / "out",
                       conf_dir=CONF_DIR, overrides=base)
    by_name = {r.config: r for r in rows}
    assert by_name["windows"].best == pytest.approx(by_name["windows"].windows, abs=1e-5)
    assert by_name["streams"].best == pytest.approx(by_name["streams"].carried, abs=1e-5)
    for r in rows:
        assert r.windows != pytest.approx(r.carried, abs=1e-4)
    best = compare.best_checkpoint(tmp_path / "out" / "windows" / "checkpoints" / "last.ckpt", "val/bpc")
    assert best.name != "last.ckpt" and best.exists()
    task, data = load_task(best)
    dm = CharDataModule(**{k: v for k, v in data.items() if k != "_target_"})
    dm.setup("fit")
    expected = carried_bpc(task.net.eval(), dm.ids["val"], batch_size=8, seq_len=24)
    assert by_name["windows"].carried == pytest.approx(expected, abs=1e-4)
    # The same reading of the test text, and no best checkpoint for a metric nothing monitored.
    dm.setup("test")
    on_test = carried_bpc(task.net.eval(), dm.ids["test"], batch_size=8, seq_len=24)
    assert compare.text_bpc(best, stateful=True, stage="test") == pytest.approx(on_test, abs=1e-4)
    last = tmp_path / "out" / "windows" / "checkpoints" / "last.ckpt"
    assert compare.best_checkpoint(last, "val/acc") == last
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| windows | carried |" in table and f"{by_name['windows'].carried:.4f}" in table


@pytest.mark.parametrize("task", ["seed", "shakespeare"])
def test_every_configuration_in_compare_yaml_composes_with_its_settings_and_builds_its_network(task):
    """A mistyped key in conf/compare.yaml would otherwise fail that configuration an hour into
    a sitting: each one is composed as compare.run composes it, its settings land where they
    name, and its network (at a small vocabulary or input size) is built."""
    listed = OmegaConf.load(CONF_DIR / "compare.yaml")
    configs = listed[f"{task}_configs"]
    assert listed.reference in configs
    for name, extra in configs.items():
        cfg = compose_train_config(CONF_DIR, [*compare.TASKS[task]["overrides"], *listed.overrides, *extra])
        for override in extra:
            key, value = override.lstrip("+").split("=", 1)
            if not value.startswith("["):
                assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), (name, key)
        net = cfg.model.net
        if task == "seed":
            net.input_size, net.num_classes = 10, 2
        else:
            net.vocab_size = 65
        assert sum(p.numel() for p in instantiate(net).parameters()) > 0, name


def test_a_comparison_that_stops_keeps_its_table_and_resume_reads_back_its_finished_rows(tmp_path):
    """The table is written after every configuration, and ``resume=True`` reads a finished
    configuration's row back instead of training it again, unless its settings changed."""
    base = dict(task="seed", reference="gru", out=tmp_path, conf_dir=CONF_DIR, overrides=[*QUIET, *TINY["synthetic"]],
                gradient_flow=False)
    configs = {"gru": ["model.net.cell=gru"], "lstm": ["model.net.cell=lstm", "model.net.dropout=2.0"]}
    with pytest.raises(InstantiationException, match=r"expected dropout in \[0, 1\), got 2.0"):  # fails before training
        compare.run(configs=configs, seconds=1, **base)
    with (tmp_path / "compare.csv").open() as f:
        assert [r["config"] for r in csv.DictReader(f)] == ["gru"]
    assert "| gru | gru | 64 |" in (tmp_path / "compare.md").read_text()
    last = tmp_path / "gru" / "checkpoints" / "last.ckpt"
    first, trained_at = json.loads((tmp_path / "gru" / "compare_row.json").read_text())["row"], last.stat().st_mtime_ns

    configs["lstm"] = ["model.net.cell=lstm"]
    rows = {r.config: r for r in compare.run(configs=configs, seconds=1, resume=True, **base)}
    assert asdict(rows["gru"]) == first and last.stat().st_mtime_ns == trained_at  # read back, not trained
    assert rows["lstm"].steps > 0 and (tmp_path / "lstm" / "compare_row.json").is_file()
    with (tmp_path / "compare.csv").open() as f:
        assert {r["config"] for r in csv.DictReader(f)} == {"gru", "lstm"}

    # Another budget is another setting: both are trained again.
    rows = {r.config: r for r in compare.run(configs=configs, seconds=2, resume=True, **base)}
    assert last.stat().st_mtime_ns != trained_at and {r.seconds for r in rows.values()} == {2}

    # A configuration that starts training again no longer has a finished row until it ends.
    configs["lstm"] = ["model.net.cell=lstm", "model.net.dropout=2.0"]
    with pytest.raises(InstantiationException, match="expected dropout"):
        compare.run(configs=configs, seconds=2, resume=True, **base)
    assert not (tmp_path / "lstm" / "compare_row.json").exists() and (tmp_path / "gru" / "compare_row.json").exists()
