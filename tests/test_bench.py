"""Smoke test of the benchmark harness: tiny shapes and data, 2 repetitions, CPU.

Checks that every row runs and that benchmark.csv and benchmark.md are written with the
expected rows and columns; no timing is asserted (the numbers depend on the machine).
"""

import csv

import pytest

from omegaconf import OmegaConf

from helpers import CONF_DIR, TINY, compose_config
from rnnlab import benchmark as bench
from rnnlab.data.grammar import generate_grammar_corpus

TINY_SHAPE = bench.Shape("tiny", B=4, T=5, D=3, H=8, L=2)


def run(tmp_path, **settings):
    """benchmark.run with conf/benchmark.yaml's defaults (as scripts/benchmark.py passes them)
    and ``settings`` over them."""
    cfg = compose_config("benchmark", [], tmp_path / "hydra")
    defaults = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    return bench.run(**{**defaults, **settings})


def test_benchmark_writes_csv_and_markdown(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(generate_grammar_corpus(20_000), encoding="utf-8")
    out = tmp_path / "out"
    # One thread: with two, a busy machine stalls OpenMP at every small matmul (many-fold slower).
    run(tmp_path, shapes=[TINY_SHAPE], reps=2, warmup=1, threads=1, out=out, shakespeare=str(text), conf_dir=CONF_DIR,
        max_new_tokens=20, char_windows=16, classifier_overrides=TINY["synthetic"],
        char_overrides=["data.seq_len=32", "data.batch_size=8", "model.net.hidden_size=16",
                        "model.sample_max_new_tokens=10"])

    with (out / "benchmark.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == bench.COLUMNS
    core = ["forward", "backward", "stepwise", "memory", "lengths", "mixed"]
    gated = ["forward", "backward", "memory", "lengths", "mixed"]
    assert [r["row"] for r in rows] == core + gated * 2 + ["scan"] * 2 + ["generate"] * 3 + ["e2e_classifier",
                                                                                              "e2e_char"]
    assert all(r["shape"] == str(TINY_SHAPE) for r in rows[:6])
    assert [r["shape"] for r in rows[6:16]] == [f"{TINY_SHAPE} gru"] * 5 + [f"{TINY_SHAPE} lstm"] * 5
    packed = "pack_padded_sequence + "
    autocast = ", same autocast"
    assert [r["reference_name"] for r in rows[:16]] == (
        ["torch.nn.RNN", "torch.nn.RNN", "rnnlab RNN.forward_stepwise", "torch.nn.RNN", packed + "torch.nn.RNN",
         "torch.nn.RNN" + autocast]
        + ["torch.nn.GRU"] * 3 + [packed + "torch.nn.GRU", "torch.nn.GRU" + autocast]
        + ["torch.nn.LSTM"] * 3 + [packed + "torch.nn.LSTM", "torch.nn.LSTM" + autocast])
    assert [(r["shape"], r["reference_name"], r["target"]) for r in rows[16:18]] == [
        (f"{TINY_SHAPE} min_gru", "rnnlab gru", "<= 0.2"), (f"{TINY_SHAPE} min_lstm", "rnnlab lstm", "<= 0.2")]
    assert [r["reference_name"] for r in rows[18:21]] == [f"nn.Embedding + nn.{m} + nn.Linear loop"
                                                          for m in ("RNN", "GRU", "LSTM")]
    for r in rows:
        assert float(r["rnnlab"]) > 0 and float(r["reference"]) > 0 and float(r["ratio"]) > 0, r
        assert r["meets_target"] in ("yes", "no") if r["target"] else r["meets_target"] == "-"
        if r["row"] == "memory":  # measured once, no spread
            assert r["ratio_q1"] == r["ratio_q3"] == ""
        else:  # the quartiles of the two repetitions' own ratios
            assert 0 < float(r["ratio_q1"]) <= float(r["ratio_q3"]), r
    # The gated cells' targets: at least as fast as torch.nn (no memory target).
    # The mixed-precision rows are measured without a target (the targets are float32's).
    assert [r["target"] for r in rows[6:11]] == ["<= 1.0", "<= 1.0", "", "<= 1.0", ""]
    assert [r["target"] for r in rows[:6]] == ["<= 0.8", "<= 0.8", "", "<= 1.2", "<= 1.0", ""]

    markdown = (out / "benchmark.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    first = rows[0]
    assert f"| {float(first['ratio']):.2f} ({float(first['ratio_q1']):.2f}-{float(first['ratio_q3']):.2f}) |" in table[2]
    for row in bench.ROWS:
        assert f"| {row} |" in markdown


def test_benchmark_skips_char_epoch_without_text(tmp_path):
    results = run(tmp_path, rows=["e2e_char"], out=tmp_path, shakespeare=str(tmp_path / "missing.txt"))
    assert [(r.row, r.meets_target, r.ratio) for r in results] == [("e2e_char", "skipped", None)]
    assert "file not found" in results[0].note
    assert "skipped" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.parametrize("argument, value", [("rows", "forward,sideways"), ("shapes", ["huge"]), ("reps", 0),
                                             ("device", "tpu"), ("cells", "rnn_relu")])
def test_benchmark_rejects_bad_arguments(tmp_path, argument, value):
    with pytest.raises(ValueError, match=argument):
        run(tmp_path, **{argument: value}, out=tmp_path)


def test_benchmark_refuses_overrides_the_bare_loop_does_not_follow(tmp_path):
    with pytest.raises(ValueError, match="model.net.cell"):
        run(tmp_path, rows=["e2e_classifier"], out=tmp_path, conf_dir=CONF_DIR, classifier_overrides=["model.net.cell=gru"])


def test_result_holds_medians_and_the_median_and_quartiles_of_paired_ratios():
    r = bench.make_result("forward", "s", "cpu", [1.0, 3.0, 3.0, 9.0], [1.0, 2.0, 4.0, 3.0], "ms", "ref", "")
    assert (r.rnnlab, r.reference) == (3.0, 2.5)  # each side's median
    # The repetitions' ratios are 1, 1.5, 0.75, 3: median 1.25 (not 3 / 2.5), quartiles 0.9375 and 1.875.
    assert (r.ratio, r.ratio_q1, r.ratio_q3) == pytest.approx((1.25, 0.9375, 1.875))
    assert r.meets_target == "no"  # forward's target is <= 0.8
    once = bench.make_result("memory", "s", "cpu", 1.0, 2.0, "MiB", "ref", "")
    assert (once.ratio, once.ratio_q1, once.ratio_q3, once.meets_target) == (0.5, None, None, "yes")
