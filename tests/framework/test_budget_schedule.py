"""callbacks=[default,budget_schedule]: the learning rate warms up, then follows a cosine to its
final value at the end of the run's budget, whether steps or wall time; every optimizer step
is taken with the scheduled rate, LearningRateMonitor logs that rate, a resumed run goes on
with the schedule, and what would change the schedule is refused."""

import csv
import json
import math
from types import SimpleNamespace

import pytest

from conftest import tiny_train
from rnnlab.callbacks import BudgetSchedule
from rnnlab.checkpoints import CheckpointError

# 512 training sequences in batches of 64: 8 steps an epoch; no epoch-wise schedule.
RUN = ["model=classifier", "model.net.hidden_size=8", "model.scheduler=null", "model.optimizer.lr=0.01",
       "callbacks=[default,budget_schedule]", "callbacks.budget_schedule.warmup=0.25",
       "callbacks.budget_schedule.final=0.1", "callbacks.rich_progress_bar=null",
       "callbacks.rich_model_summary=null", "callbacks.hidden_state_monitor=null",
       "callbacks.parameter_histograms=null"]


def rates_of(out_file):
    return [tuple(pair) for pair in json.loads(out_file.read_text())]


def probe(out_file) -> list[str]:
    return ["+callbacks.rates._target_=probes.RecordLearningRates", f"+callbacks.rates.out_file={out_file}"]


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_its_final_rate():
    schedule = BudgetSchedule(warmup=0.2, final=0.1)
    assert schedule.factor(0.0) == 0.0
    assert schedule.factor(0.1) == pytest.approx(0.5)
    assert schedule.factor(0.2) == pytest.approx(1.0)
    assert schedule.factor(0.6) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert schedule.factor(1.0) == pytest.approx(0.1)
    assert BudgetSchedule().factor(0.0) == 1.0 and BudgetSchedule().factor(1.0) == pytest.approx(0.0)
    assert BudgetSchedule(final=1.0).factor(0.7) == pytest.approx(1.0)  # a constant rate after no warm-up


def test_progress_is_the_larger_share_of_the_steps_and_of_the_time_spent():
    class Clock:  # a Timer with 30 s of a 120 s budget spent
        def time_elapsed(self, stage):
            return 30.0

        def time_remaining(self, stage):
            return 90.0

    schedule = BudgetSchedule()
    schedule._timer, schedule._steps = Clock(), 100.0
    assert schedule.progress(SimpleNamespace(global_step=10)) == pytest.approx(0.25)  # time leads
    assert schedule.progress(SimpleNamespace(global_step=40)) == pytest.approx(0.40)  # steps lead
    assert schedule.progress(SimpleNamespace(global_step=400)) == 1.0
    schedule._timer, schedule._steps = None, 100.0
    assert schedule.progress(SimpleNamespace(global_step=40)) == pytest.approx(0.40)
    schedule._timer, schedule._steps = Clock(), math.inf  # max_epochs=-1 with max_time
    assert schedule.progress(SimpleNamespace(global_step=40)) == pytest.approx(0.25)


@pytest.mark.parametrize("world_size", [1, 2])
def test_under_ddp_every_rank_takes_rank_zeros_progress(world_size):
    """The ranks' clocks differ; each rank sets the rate from rank 0's share of the budget, so the
    ranks' optimizers stay the same."""
    import torch

    broadcasts = []

    def broadcast(obj, src):
        broadcasts.append((obj, src))
        return 0.25  # rank 0's share

    schedule = BudgetSchedule(warmup=0.5)
    schedule._timer, schedule._steps = None, 100.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    trainer = SimpleNamespace(global_step=10, world_size=world_size, optimizers=[optimizer],
                              strategy=SimpleNamespace(broadcast=broadcast))
    schedule.on_train_batch_start(trainer, None, None, 0)
    if world_size == 1:  # this rank's own share, 10 of 100 steps: 0.1 / 0.5 of the warm-up
        assert broadcasts == [] and optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.2)
    else:
        assert broadcasts == [(0.1, 0)] and optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5)


def test_every_step_takes_the_scheduled_rate_and_the_monitor_logs_it(tmp_path):
    out = tmp_path / "rates.json"
    tiny_train(tmp_path, *RUN, "trainer.max_epochs=2", "logger=csv", "trainer.log_every_n_steps=1", *probe(out))
    rates = rates_of(out)
    assert [step for step, _ in rates] == list(range(16))
    schedule = BudgetSchedule(warmup=0.25, final=0.1)
    for step, lr in rates:
        assert lr == pytest.approx(0.01 * schedule.factor(step / 16)), step
    assert rates[0][1] == 0.0 and max(lr for _, lr in rates) == pytest.approx(0.01 * schedule.factor(4 / 16))
    with open(tmp_path / "csv" / "metrics.csv") as f:
        logged = {int(row["step"]): float(row["lr-Adam"]) for row in csv.DictReader(f) if row.get("lr-Adam")}
    assert logged == pytest.approx(dict(rates))  # the rate each step used, not the one before


def test_a_wall_time_budget_ends_its_schedule_when_the_time_is_up(tmp_path):
    out = tmp_path / "rates.json"
    tiny_train(tmp_path, *RUN, "trainer.max_epochs=-1", "+trainer.max_time=00:00:00:04", *probe(out))
    rates = rates_of(out)
    lrs = [lr for _, lr in rates]
    assert len(rates) > 20  # steps of a few milliseconds: many in 4 s
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[0] < 0.01 * 0.1
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # down the cosine, in time
    assert lrs[-1] < 0.01 * 0.15  # at the end of the budget, close to final (0.1 of the rate)


def test_a_resumed_run_goes_on_with_the_schedule_of_an_uninterrupted_one(tmp_path):
    keep_every_epoch = ["callbacks.model_checkpoint.save_top_k=-1"]  # epoch_000.ckpt, epoch_001.ckpt, ...
    whole = tmp_path / "whole"
    tiny_train(whole, *RUN, "trainer.max_epochs=3", *keep_every_epoch, *probe(whole / "rates.json"))
    resumed = tmp_path / "resumed"
    tiny_train(resumed, *RUN, "trainer.max_epochs=3", f"ckpt_path={whole / 'checkpoints' / 'epoch_000.ckpt'}",
               *probe(resumed / "rates.json"))
    uninterrupted, after = rates_of(whole / "rates.json"), rates_of(resumed / "rates.json")
    assert [step for step, _ in after] == list(range(8, 24))
    assert dict(after) == pytest.approx(dict(uninterrupted[8:]))


def test_what_would_change_the_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="callbacks.budget_schedule sets the learning rate at every step, and so "
                                         "does model.scheduler: expected one of them, got both"):
        tiny_train(tmp_path / "a", *[o for o in RUN if o != "model.scheduler=null"], "trainer.max_epochs=1")
    with pytest.raises(ValueError, match="expected trainer.max_time, trainer.max_steps or trainer.max_epochs to be "
                                         "set, got none"):
        tiny_train(tmp_path / "b", *RUN, "trainer.max_epochs=-1")
    for key, value, expected in (("warmup", 1.0, r"\[0, 1\)"), ("final", -0.5, r"\[0, 1\]"), ("warmup", "x", "")):
        with pytest.raises(ValueError, match=f"callbacks.budget_schedule.{key}: expected a number in {expected}"):
            BudgetSchedule(**{key: value})
    # A longer budget is another schedule: a resume may not extend the run.
    first = tmp_path / "first"
    tiny_train(first, *RUN, "trainer.max_epochs=1")
    with pytest.raises(CheckpointError, match="trainer.max_epochs: checkpoint 1, config 2.*only trainer.min_epochs"):
        tiny_train(tmp_path / "longer", *RUN, "trainer.max_epochs=2", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
