"""`run_sweep`: a Ray Tune sweep over training-config keys, each trial a real `hybrid train` run on Ray Train.

    space       the keys, values, metric and data checked before Ray starts (space.py)
    trial       a Tune function trainable that runs the trial's training on Ray Train (trial.py)
    scheduler   ASHA on the reported metric with the training step as the time attribute (`tune.grace_steps`,
                `tune.reduction_factor`, `tune.max_iters` = every trial's train.max_iters), or FIFO (scheduler.py)
    progress    one line per report and per finished trial (progress.py)
    results     results.csv (one row per trial), best.yaml (the best trial's whole resolved config: it trains with
                `hybrid train --config`), sweep.png (the metric over the first two swept keys, learning curves),
                and a `Sweep` for the command to print; a trial's metric is the best value it reported, and its
                checkpoint the one saved at that step (results.py; `collect` here)
    recall      `tune.objective=recall`: the recall data and the shared base, made before the trials (recall_base.py)
    resume      `resume=True` restores Tune's state (Tuner.restore): finished trials are not rerun, unfinished ones
                continue from their checkpoints; on a finished sweep it only collects the results again

Tune keeps its state in <output_dir>/tune; the sweep's own config (the base and the `tune` section) in
<output_dir>/sweep.yaml, which a resume uses. `tune.output_dir` may be a URI (s3://…): Tune keeps its state there
itself, the trials publish their checkpoints there (hybrid/training/checkpoints.py), the results are written there
as whole files.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable

import yaml
from pydantic import ValidationError

from hybrid.config.recipe import RecipeConfig
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.core.errors import HybridError, root_cause
from hybrid.core.io import exclusive_lock
from hybrid.core.ray_utils import fixed_resources, init_ray
from hybrid.core.redact import library_message
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import check_fits
from hybrid.tuning.progress import _trial_error, progress_callback  # noqa: F401 (_trial_error: see below)
from hybrid.tuning.recall_base import recall_base
from hybrid.tuning.results import Sweep, TrialRow, write_results
from hybrid.tuning.scheduler import reported, resumable_asha, resumable_variants  # noqa: F401 (reported: see below)
from hybrid.tuning.space import check_sweep, grid_size, param_space, with_absolute_sweep_paths
from hybrid.tuning.trial import TRIAL_ACTOR, TrialPlan, plan_trials, run_trial, trial_name

# Tune saves a sweep's callbacks and scheduler with the functions they call named by module: sweeps saved before this
# module was split (progress, scheduler, trial) look up `reported`, `_trial_error` and `trial_name` here on --resume.

STATE = "tune"  # Tune's own folder under output_dir


def output_dir_of(tcfg: TuneConfig) -> str:
    return storage.at(tcfg.output_dir).absolute(tcfg.output_dir)


def sweep_lock(output_dir: str):
    """One command at a time per sweep (as per training folder, hybrid/training/train.py:output_dir_lock): a
    `--resume` while the sweep runs would train the same trials into the same folders. The lock is a local file in the
    folder's work folder (hybrid.core.storage: the folder itself, or a URI's staging folder on this machine: one sweep
    per URI, per machine). The kernel drops the lock with the process."""
    lock = storage.at(output_dir).work_dir(output_dir) / ".sweep.lock"
    return exclusive_lock(lock, f"tune.output_dir {storage.shown(output_dir)}", wait=False)


def holds_sweep(output_dir: str) -> bool:
    """A sweep started here (Tune saved its state): `--resume` continues it, a new sweep is refused. A folder where a
    sweep failed before Tune started (sweep.yaml and nothing else) holds none, and is reused."""
    from ray import tune

    return storage.exists(storage.join(output_dir, "sweep.yaml")) and tune.Tuner.can_restore(
        storage.join(output_dir, STATE)
    )


def run_sweep(base: RecipeConfig, tcfg: TuneConfig, resume: bool = False, say: Callable[[str], None] = print) -> Sweep:
    """Run (or resume) the sweep and write its results; see the module docstring. Everything that can be checked is
    checked before sweep.yaml is written (a refused sweep leaves no record that blocks the next one)."""
    import contextlib

    t0 = time.time()
    if not resume:
        base, tcfg = with_absolute_sweep_paths(base, tcfg)
        check_sweep(base, tcfg, data=tcfg.objective != "recall")  # before the recall objective's data: minutes
    output_dir = output_dir_of(tcfg)
    state = storage.join(output_dir, STATE)
    saved = storage.join(output_dir, "sweep.yaml")
    shown = storage.shown(output_dir)
    with contextlib.ExitStack() as hold:
        hold.enter_context(sweep_lock(output_dir))
        if resume:
            if not holds_sweep(output_dir):
                raise HybridError(f"{shown}: no sweep to resume (run `hybrid tune` without --resume first)")
            base, tcfg = _read_sweep(saved)
        else:
            if holds_sweep(output_dir):
                raise HybridError(
                    f"{shown}: holds a sweep already; continue it with --resume, or choose another tune.output_dir"
                )
            if tcfg.objective == "recall":
                base = recall_base(base, tcfg, output_dir, say)
                check_sweep(base, tcfg)
        # Train V2's placement-group cleaner needs the dashboard's State API; the trials' own logs stay in Ray's log
        # folder (the progress lines below say what happens, a failed trial's error is in the results)
        init_ray(include_dashboard=True, log_to_driver=False)
        fixed = fixed_resources()
        if fixed is not None:
            check_fits(
                base.model_copy(
                    update={"train": base.train.model_copy(update={"num_workers": max(1, base.train.num_workers)})}
                ),
                what="each trial's ",
            )
        import ray

        plan = plan_trials(base, tcfg, fixed or ray.cluster_resources(), fixed is not None)
        if plan.note:
            say(plan.note)
        tuner = _tuner(base, tcfg, output_dir, plan, resume, say)
        if not resume:
            storage.write_text(
                saved,
                yaml.safe_dump(
                    {"base": base.model_dump(mode="json"), "tune": tcfg.model_dump(mode="json")}, sort_keys=False
                ),
            )
        # one line per failed trial (the progress line above, the error column of the results), not Tune's traceback
        # on stderr for each: the whole of it stays in the trial's error.txt under <output_dir>/tune
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        grid = tuner.fit()
        to_run = trials_to_run(state, tcfg)
        if to_run:
            # Ctrl-C: Tune stopped its loop, saved its state and stopped the trial actors (it returns as if done);
            # their Train workers go with them a moment later — wait for that, so nothing writes once the command
            # has said it stopped
            wait_for_trials_to_stop()
            say(f"stopped with {to_run} trial(s) to run; continue with: hybrid tune tune.output_dir={shown} --resume")
            raise KeyboardInterrupt
        sweep = collect(grid, tcfg, output_dir, time.time() - t0)
        write_results(sweep, tcfg)
    if sweep.trials and all(t.status == "failed" for t in sweep.trials):
        raise HybridError(f"every trial failed; the first: {sweep.trials[0].error}")
    return sweep


def _tuner(
    base: RecipeConfig, tcfg: TuneConfig, output_dir: str, plan: TrialPlan, resume: bool, say: Callable[[str], None]
):
    """Tune's Tuner for the sweep (restored from its state on resume)."""
    from ray import tune

    state = storage.join(output_dir, STATE)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base_json=base.model_dump_json(),
            tune_json=tcfg.model_dump_json(),
            output_dir=output_dir,
            data_cpus=plan.data_cpus,
        ),
        TRIAL_ACTOR,
    )
    if resume:  # (with the callbacks it was started with: Tune saved them)
        try:
            return tune.Tuner.restore(state, trainable=trainable, resume_unfinished=True, resume_errored=True)
        except (AttributeError, ImportError, pickle.UnpicklingError) as e:  # saved by a hybrid that named things else
            raise HybridError(
                f"{storage.shown(output_dir)}: this version of hybrid cannot read the sweep's saved Tune state "
                f"({type(e).__name__}: {e}); start the sweep again in a new tune.output_dir"
            ) from None
    scheduler = (
        resumable_asha(
            state,
            time_attr="step",
            grace_period=tcfg.grace_steps,
            reduction_factor=tcfg.reduction_factor,
            max_t=tcfg.max_iters,
        )
        if tcfg.scheduler == "asha"
        else None
    )
    run_config = tune.RunConfig(
        name=STATE, storage_path=output_dir, verbose=0, callbacks=[progress_callback(tcfg, say)]
    )
    return tune.Tuner(
        trainable,
        param_space=param_space(tcfg),
        run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=tcfg.metric,
            mode=tcfg.mode,
            scheduler=scheduler,
            num_samples=tcfg.num_samples,
            # (Tune applies max_concurrent_trials to a searcher it makes itself, not to one given to it)
            search_alg=resumable_variants(tcfg.seed, plan.concurrency),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
    )


def trials_to_run(state: str, tcfg: TuneConfig) -> int:
    """Trials of the sweep that Tune's saved state does not record as ended (finished, stopped early or failed) —
    none unless Tune's loop was stopped (Ctrl-C). The state is saved before Tune stops the running trials, which it
    then marks ended in memory (so the results it returns look complete); trials its searcher had not made yet are
    missing from it."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(state).trials
    return grid_size(tcfg) - len(trials) + sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


# The actors of a trial that train or write: Tune's trial actor (a function trainable), its Train controller and workers
# (not Ray's helpers, some of them detached for good: Train's state actor, its placement-group cleaner)
TRIAL_ACTOR_CLASSES = ("ImplicitFunc", "TrainController", "RayTrainWorker")


def wait_for_trials_to_stop(timeout_s: float = 60.0) -> None:
    """Until no trial actor, Train controller or Train worker of this driver's job is alive."""
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            alive = list_actors(filters=[("job_id", "=", job), ("state", "=", "ALIVE")], raise_on_missing_output=False)
        except Exception:  # no State API (no dashboard): nothing to ask
            return
        if not any(a.class_name.rsplit(".", 1)[-1] in TRIAL_ACTOR_CLASSES for a in alive):
            return
        time.sleep(0.5)


def _read_sweep(path: str) -> tuple[RecipeConfig, TuneConfig]:
    try:
        data = yaml.safe_load(storage.read_text(path))
        return RecipeConfig.model_validate(data["base"]), TuneConfig.model_validate(data["tune"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValidationError) as e:
        raise HybridError(f"{storage.shown(path)}: not a readable sweep record ({library_message(e, path)})") from None


def collect(grid, tcfg: TuneConfig, output_dir: str, seconds: float) -> Sweep:
    """One row per trial from Tune's results: its best reported value, the step and checkpoint of it."""
    rows = []
    for result in grid:
        name = storage.base_name(result.path)
        frame = result.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if frame is not None and tcfg.metric in frame and "step" in frame:
            curve = [
                (int(s), float(v))
                for s, v in zip(frame["step"], frame[tcfg.metric])
                if v is not None and not (isinstance(v, float) and math.isnan(v))
            ]
        steps = int(frame["step"].max()) if frame is not None and "step" in frame and len(frame) else 0
        value, at = None, None
        if curve:
            at, value = (min if tcfg.mode == "min" else max)(curve, key=lambda sv: sv[1])
        checkpoint = None
        if at is not None:
            path = storage.join(output_dir, "trials", name, ckpt_io.checkpoint_name(at))
            checkpoint = path if storage.exists(storage.join(path, ckpt_io.TRAINER_STATE)) else None
        error = None
        if result.error is not None:
            error = _one_line(result.error)
        status = "failed" if error else ("stopped early" if steps < tcfg.max_iters else "done")
        config = {k: (result.config or {}).get(k) for k in tcfg.space}
        rows.append(TrialRow(name, status, steps, config, value, checkpoint, error, curve))
    rows.sort(key=lambda r: r.trial_id)
    scored = [r for r in rows if r.value is not None]
    best = (min if tcfg.mode == "min" else max)(scored, key=lambda r: r.value) if scored else None
    return Sweep(tcfg.metric, tcfg.mode, output_dir, rows, best, seconds, list(tcfg.space))


def _one_line(error: BaseException) -> str:
    """The root cause of a trial's failure, as one line (HybridError messages are already that)."""
    error = root_cause(error)
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]
