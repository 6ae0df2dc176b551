"""The sweep's progress: one line per report and per finished trial, with the counts and the best so far."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from hybrid.config.tune import TuneConfig
from hybrid.tuning.trial import trial_name


def progress_callback(tcfg: TuneConfig, say: Callable[[str], None]):
    from ray.tune import Callback

    class Progress(Callback):
        """One line per report and per finished trial: running / done / stopped early / failed, best so far."""

        def __init__(self):
            self.best: tuple[float, str] | None = None
            self.last_step: dict[str, int] = {}
            self.finished: dict[str, str] = {}

        def _counts(self, trials) -> str:
            running = sum(t.status == "RUNNING" for t in trials)
            stopped = sum(1 for v in self.finished.values() if v == "stopped early")
            failed = sum(1 for v in self.finished.values() if v == "failed")
            done = len(self.finished) - stopped - failed
            best = f" | best {tcfg.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            return f"running {running}, done {done}, stopped early {stopped}, failed {failed}{best}"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            name, value = trial_name(trial), result.get(tcfg.metric)
            self.last_step[name] = int(result.get("step", 0))
            if isinstance(value, (int, float)) and not math.isnan(value):
                better = self.best is None or (value < self.best[0] if tcfg.mode == "min" else value > self.best[0])
                if better:
                    self.best = (float(value), name)
                say(f"{name} step {self.last_step[name]}: {tcfg.metric} {value:.4f} | {self._counts(trials)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial_name(trial)
            early = self.last_step.get(name, 0) < tcfg.max_iters
            self.finished[name] = "stopped early" if early else "done"
            say(f"{name} {self.finished[name]} at step {self.last_step.get(name, 0)} | {self._counts(trials)}")

        def on_trial_error(self, iteration, trials, trial, **info):
            name = trial_name(trial)
            self.finished[name] = "failed"
            error = _trial_error(trial)
            say(f"{name} failed{f': {error}' if error else ''} | {self._counts(trials)}")

    return Progress()


def _trial_error(trial) -> str | None:
    """A failed trial's error as one line, from the text file Tune writes it to before it calls back (its last line
    is the exception, `module.Class: message`; the pickled copy beside it is never loaded)."""
    try:
        if trial.error_file:
            lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
            if lines:
                found = re.match(r"^[\w.]+(?:Error|Exception|Exit): (.+)$", lines[-1])
                return (found.group(1) if found else lines[-1])[:300]
    except OSError:
        return None  # unreadable here: the results still carry the error (`collect`)
    return None
