"""An Optuna sweeper whose searches resume (``hydra.sweeper._target_`` in rnnlab's
``hparams_search`` configs).

Hydra's Optuna sweeper already loads a study that exists in its ``storage``, but then runs
``n_trials`` more trials, numbers their jobs from 0 again (over the directories of the
first run) and leaves the trials that were running when the search was killed as running
forever. This sweeper, before handing over to it:

- counts the trials that ended (complete, pruned or failed) and runs only the rest of
  ``n_trials``, so ``n_trials`` is the search's total;
- marks each trial still "running" (its process was killed) as failed, with the user
  attribute ``interrupted``, and asks its parameters again first: that trial's job finds
  the interrupted job's ``last.ckpt`` and resumes from it (:mod:`rnnlab.sweeps`);
- numbers new jobs after the study's trials, so job ``<n>`` is trial ``n``;
- re-seeds a seeded sampler with ``seed + number of trials``, so the resumed search does not
  draw the first run's random start-up points again and is itself reproducible.
"""

from __future__ import annotations

import logging
from typing import List

from hydra.utils import instantiate

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # no sweeps extra: Hydra scans this module all the same, and finds no sweeper here
    OptunaSweeper = None

if OptunaSweeper is not None:
    class ResumableOptunaSweeper(OptunaSweeper):
        """Hydra's Optuna sweeper, continuing the study in its storage (see the module docs)."""

        def sweep(self, arguments: List[str]) -> None:
            impl = self.sweeper
            if impl.storage is not None:
                self._continue_study(impl)
            return super().sweep(arguments)

        @staticmethod
        def _continue_study(impl) -> None:
            import optuna
            from optuna.trial import TrialState

            storage = optuna.storages.get_storage(impl.storage)
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=storage)
            except KeyError:  # a new search
                return
            ended = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
                     and not t.user_attrs.get("interrupted")]
            running = [t for t in study.trials if t.state == TrialState.RUNNING]
            study_id = storage.get_study_id_from_name(impl.study_name)
            asked = len(study.trials)  # the next trial's number, and its job's
            for trial in running:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_user_attr(trial_id, "interrupted", True)
                storage.set_trial_state(trial_id, TrialState.FAIL)
                study.enqueue_trial(trial.params)
            impl.n_trials = max(0, impl.n_trials - len(ended))
            impl.job_idx = asked  # an enqueued trial is a waiting trial numbered from here
            sampler_cfg = impl.config.hydra.sweeper.get("sampler")
            if sampler_cfg is not None and sampler_cfg.get("seed") is not None:
                impl.sampler = instantiate(sampler_cfg, seed=int(sampler_cfg.seed) + asked)
            log.info(f"Continuing study {impl.study_name!r}: {len(ended)} trials ended, {len(running)} interrupted "
                     f"(asked again, resuming from their checkpoints), {impl.n_trials} to run")
