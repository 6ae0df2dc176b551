"""ASHA on the reported metric with the training step as the time attribute (`tune.grace_steps`,
`tune.reduction_factor`, `tune.max_iters` = every trial's train.max_iters), whose rungs survive a resume."""

from __future__ import annotations

import json
import math

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
