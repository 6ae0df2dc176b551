"""What decides a sweep's next trial, made to survive a resume: ASHA on the reported metric with the training step as
the time attribute (`tune.grace_steps`, `tune.reduction_factor`, `tune.max_iters` = every trial's train.max_iters),
whose rungs survive it; and the grid's generator, whose place in the grid is taken from the trials Tune restored."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.tuning.trial import trial_name


def reported(trial_dir: str, time_attr: str, metric: str) -> list[tuple[float, float]]:
    """(time, value) of every result a trial reported, from Tune's own record of it (result.json)."""
    out = []
    try:
        lines = storage.read_text(storage.join(trial_dir, "result.json")).splitlines()
    except (OSError, HybridError):
        return out
    for line in lines:
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        t, v = result.get(time_attr), result.get(metric)
        if isinstance(t, (int, float)) and isinstance(v, (int, float)) and not math.isnan(v):
            out.append((t, v))
    return out


def resumable_asha(state_dir: str, **kwargs):
    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        """ASHA whose rungs survive `--resume`: Tune restores the trials but not the scheduler, so a trial added on
        resume has what it reported before recorded at the rungs it passed; a resumed sweep then judges the
        remaining trials as the uninterrupted one would."""

        def on_trial_add(self, tune_controller, trial):
            super().on_trial_add(tune_controller, trial)
            bracket = self._trial_info[trial.trial_id]
            for t, value in reported(storage.join(state_dir, trial_name(trial)), self._time_attr, self._metric):
                bracket.on_result(trial, t, self._metric_op * value)  # records; the decision was made back then

    return ResumableASHA(**kwargs)


def stored_trials(state_dir: str) -> dict[str, str] | None:
    """{trial id: status} from the newest experiment state Tune saved in `state_dir` (a local folder), or None. Read
    as JSON only: nothing in it is unpickled here."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    newest = _find_newest_experiment_checkpoint(state_dir)
    if newest is None:
        return None
    trials = {}
    for json_state, *_ in json.loads(Path(newest).read_text())["trial_data"]:
        state = json.loads(json_state)
        trials[state["trial_id"]] = state["status"]
    return trials


def resumable_variants(seed: int, max_concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator, _TrialIterator
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng

    class ResumableVariants(BasicVariantGenerator):
        """Tune's grid/random generator, one trial at a time if asked, whose state on resume agrees with the trials
        Tune restored. Tune saves its trials and this generator's state side by side and uploads them as separate
        files, so a sweep killed during an upload can leave a generator state older or newer than the trials: older,
        it waits forever for a trial that ended (max_concurrent) or runs a grid point twice; newer, it skips the
        points it had made but the trials do not hold. So on resume the generator is made again from the seed and
        stepped past the restored trials (the same points, the same ids), and the trials Tune reruns are its live
        ones."""

        def __init__(self) -> None:
            super().__init__(random_state=seed, max_concurrent=max_concurrent)
            self.seed = seed

        def restore_from_dir(self, dirpath: str) -> None:
            super().restore_from_dir(dirpath)
            trials = stored_trials(dirpath)
            if trials is None or len(self._iterators) != 1:
                return  # (one add_configurations per sweep: anything else is Tune's own state, kept)
            old = self._iterators[0]
            self._random_state = _BackwardsCompatibleNumpyRng(self.seed)
            fresh = _TrialIterator(
                uuid_prefix=self._uuid_prefix,
                num_samples=old.num_samples,
                unresolved_spec=old.unresolved_spec,
                constant_grid_search=self._constant_grid_search,
                points_to_evaluate=copy.deepcopy(self._points_to_evaluate),  # (as add_configurations does)
                lazy_eval=old.lazy_eval,
                random_state=self._random_state,
            )
            made = [trial.trial_id for trial in itertools.islice(fresh, len(trials))]
            if set(made) != set(trials):
                raise HybridError(
                    f"the sweep's saved Tune state holds trials {sorted(set(trials) - set(made))} that its grid "
                    "does not make again; start the sweep again in a new tune.output_dir"
                )
            self._iterators = [fresh]
            self._trial_generator = itertools.chain([], fresh)
            self._trial_iter = None
            self._finished = False
            self._live_trials = {tid for tid, status in trials.items() if status != "TERMINATED"}

    return ResumableVariants()
