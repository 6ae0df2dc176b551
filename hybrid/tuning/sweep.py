"""`run_sweep`: a Ray Tune sweep over training-config keys, each trial a real `hybrid train` run on Ray Train.

    trial       a Tune function trainable that builds the run's `TorchTrainer` (Train V2) with `TuneReportCallback`:
                the recipe's reports (step, val_loss, val_exact_match, train_loss, the checkpoint path) reach Tune.
                Its name is `trial_<n>` (Tune's counter, no timestamp); its training output folder is
                <output_dir>/trials/<name>, so a retried or resumed trial resumes from its own checkpoints; with
                `memory.backend=ray` its memory service is its own, and its shard actors are killed when it ends
    scheduler   ASHA on the reported metric with the training step as the time attribute (`tune.grace_steps`,
                `tune.reduction_factor`, `tune.max_iters` = every trial's train.max_iters), or FIFO
    results     results.csv (one row per trial), best.yaml (the best trial's whole resolved config: it trains with
                `hybrid train --config`), sweep.png (the metric over the first two swept keys, learning curves),
                and a `Sweep` for the command to print; a trial's metric is the best value it reported, and its
                checkpoint the one saved at that step
    resume      `resume=True` restores Tune's state (Tuner.restore): finished trials are not rerun, unfinished ones
                continue from their checkpoints; on a finished sweep it only collects the results again

Tune keeps its state in <output_dir>/tune; the sweep's own config (the base and the `tune` section) in
<output_dir>/sweep.yaml, which a resume uses. `tune.output_dir` may be a URI (s3://…): Tune keeps its state there
itself, the trials publish their checkpoints there (hybrid/training/checkpoints.py), the results are written there
as whole files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from hybrid.config.recipe import SECTIONS, RecipeConfig, absolute_path, path_keys, with_absolute_paths, with_values
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.core.errors import ConfigError, HybridError
from hybrid.core.io import exclusive_lock
from hybrid.core.ray_utils import fixed_resources, init_ray
from hybrid.core.redact import library_message
from hybrid.memory.ray_store import RAY_NAMESPACE, shard_name
from hybrid.training import checkpoints as ckpt_io
from hybrid.training import recall as rc
from hybrid.training.recipe import REPORTED_METRICS
from hybrid.training.train import check_fits, fit_on_ray, prepare

STATE = "tune"  # Tune's own folder under output_dir
# A trial's worker group that does not start within Ray Train's 60 s (other trials hold the CPUs) is started again
# this many times — waiting is what it needs, not being recorded `failed`
START_RETRIES = 5

# Keys every trial's config gets from the sweep (`trial_config`): swept, they would be silently overwritten
OWNED = {
    "train.max_iters": "every trial runs tune.max_iters steps (ASHA's budget); set tune.max_iters",
    "train.output_dir": "each trial trains into <tune.output_dir>/trials/<trial>",
    "train.resume": "each trial resumes its own checkpoints (auto), so a retried or resumed trial continues",
    "train.num_workers": "the sweep's concurrency and each trial's CPUs are counted from it; set it for every trial "
                         "outside tune.space",
    "train.best_by": "it follows tune.metric",
    "memory.service": "each trial gets a memory service of its own (<service>-<sweep>-<trial>)",
}


# -- the space ------------------------------------------------------------------------------------------------------
def grid_size(tcfg: TuneConfig) -> int:
    """Trials the sweep will have: the grid's points × num_samples."""
    return math.prod(len(spec) for spec in tcfg.space.values() if isinstance(spec, list)) * tcfg.num_samples


def check_space(base: RecipeConfig, tcfg: TuneConfig) -> None:
    """Every key is a training-config key the sweep does not set itself, the grid is not larger than
    tune.max_trials, and every value a key can take is valid — before any trial starts."""
    for key in tcfg.space:
        if key in OWNED:
            raise ConfigError(f"tune.space: {key}: set by the sweep for every trial, so it cannot be swept ({OWNED[key]})")
    trials = grid_size(tcfg)
    if trials > tcfg.max_trials:
        points = " × ".join(str(len(v)) for v in tcfg.space.values() if isinstance(v, list))
        raise ConfigError(f"tune.space: {trials:,} trials ({points} grid points × tune.num_samples {tcfg.num_samples}) "
                          f"is more than tune.max_trials ({tcfg.max_trials:,}); narrow the space or raise "
                          f"tune.max_trials")
    for key, spec in tcfg.space.items():
        if isinstance(spec, list):
            candidates = spec
        else:
            (kind, args), = spec.items()
            candidates = args
            if kind in ("uniform", "loguniform"):
                section, _, name = key.partition(".")
                fields = type(getattr(base, section)).model_fields if section in SECTIONS else {}
                if name in fields and fields[name].annotation in (int, "int"):
                    raise ConfigError(f"tune.space: {key}: {kind} draws fractions, but {key} is an integer "
                                      f"(give a list or {{choice: [...]}})")
        for value in candidates:
            with_values(base, {key: value})


def check_sweep(base: RecipeConfig, tcfg: TuneConfig, data: bool = True) -> None:
    """What can be known wrong before Ray starts: the metric, the space, the data (`data=False`: the recall objective
    makes its data later) — one line each."""
    if tcfg.objective == "recall" and storage.is_uri(tcfg.output_dir):
        raise ConfigError(f"tune.objective=recall: tune.output_dir={storage.shown(tcfg.output_dir)} must be a local "
                          f"folder (the recall data and the base are made on this machine)")
    if tcfg.metric not in REPORTED_METRICS:
        raise ConfigError(f"tune.metric={tcfg.metric}: not a metric a trial reports (one of "
                          f"{', '.join(REPORTED_METRICS)})")
    check_space(base, tcfg)
    if not data:
        return
    if base.data.train is None:
        raise ConfigError("data.train: the trials need training data (data.train=PATH)")
    if tcfg.metric in ("val_loss", "val_exact_match") and not base.data.validation:
        raise ConfigError(f"tune.metric={tcfg.metric}: the trials need validation data (data.validation=PATH)")


def with_absolute_sweep_paths(base: RecipeConfig, tcfg: TuneConfig, cwd: str | None = None
                              ) -> tuple[RecipeConfig, TuneConfig]:
    """Every path setting (data.*, model.pretrained, train.init_from, tune.output_dir, …, and swept values of them)
    made absolute against the folder the command started in: Tune runs each trial in its own folder, where a
    relative `data.train=datasets/io_pairs/train.jsonl` names nothing."""
    cwd = cwd or os.getcwd()
    paths = set(path_keys())

    def fix(key, spec):
        if key not in paths:
            return spec
        if isinstance(spec, list):
            return [absolute_path(key, v, cwd) for v in spec]
        (kind, args), = spec.items()
        return {kind: [absolute_path(key, v, cwd) for v in args]}

    space = {key: fix(key, spec) for key, spec in tcfg.space.items()}
    output_dir = tcfg.output_dir if storage.is_uri(tcfg.output_dir) else absolute_path("tune.output_dir",
                                                                                        tcfg.output_dir, cwd)
    return with_absolute_paths(base, cwd), tcfg.model_copy(update={"space": space, "output_dir": output_dir})


def param_space(tcfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    make = {"choice": tune.choice, "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a)}
    out = {}
    for key, spec in tcfg.space.items():
        if isinstance(spec, list):
            out[key] = tune.grid_search(spec)
        else:
            (kind, args), = spec.items()
            out[key] = make[kind](args)
    return out


def trial_name(trial) -> str:
    """`trial_<n>`: Tune's counter (ids look like `a1b2c_00003`; the prefix is random, the counter is not)."""
    return f"trial_{trial.trial_id.rsplit('_', 1)[-1]}"


def service_name(base: str, output_dir: str, trial: str) -> str:
    """A memory service of the trial's own: concurrent trials (and sweeps) never share or reset shards."""
    return f"{base}-{hashlib.blake2b(str(output_dir).encode(), digest_size=4).hexdigest()}-{trial}"


def trial_config(base: RecipeConfig, tcfg: TuneConfig, values: dict[str, Any], name: str,
                 output_dir: str, data_cpus: tuple[float, int] | None = None) -> RecipeConfig:
    """The trial's training config. `data_cpus`: (CPUs per read task, tasks) its data stream reserves, decided for
    the whole sweep (`TrialPlan`), where data.cpus_per_task is not set."""
    cfg = with_values(base, values)
    train_update = {"max_iters": tcfg.max_iters, "output_dir": storage.join(output_dir, "trials", name), "resume": "auto",
                    "num_workers": max(1, cfg.train.num_workers)}
    if tcfg.metric in ("val_loss", "val_exact_match"):
        train_update["best_by"] = tcfg.metric  # the checkpoint kept as `best` is the one at the trial's best metric
    updates = {"train": cfg.train.model_copy(update=train_update)}
    if data_cpus is not None and cfg.data.cpus_per_task is None:
        updates["data"] = cfg.data.model_copy(update={"cpus_per_task": data_cpus[0],
                                                      "read_tasks": cfg.data.read_tasks or data_cpus[1]})
    if cfg.memory.backend == "ray":
        updates["memory"] = cfg.memory.model_copy(update={"service": service_name(cfg.memory.service, output_dir,
                                                                                     name)})
    return cfg.model_copy(update=updates)


# -- one trial ------------------------------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], base_json: str, tune_json: str, output_dir: str,
              data_cpus: tuple[float, int] | None = None) -> None:
    """The Tune trainable: this trial's training run on Ray Train, reporting through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = tune.get_context().get_trial_name()
    cfg = trial_config(RecipeConfig.model_validate_json(base_json), TuneConfig.model_validate_json(tune_json),
                       config, name, output_dir, data_cpus)
    state = ckpt_io.latest_state(cfg.train.output_dir)
    if state is not None:
        if state["step"] >= cfg.train.max_iters and state.get("metrics"):
            # finished before a kill reached Tune's state: nothing to train, report where it ended so Tune can
            # close the trial (a trial that reports nothing is an error to Tune)
            tune.report({**state["metrics"], "best_val_loss": state.get("best_val_loss")})
            return
    try:
        spec = prepare(cfg, cfg.train.num_workers, use_ray=True, quiet=True)
        fit_on_ray(spec, callbacks=[TuneReportCallback()], start_retries=START_RETRIES)
    finally:
        if cfg.memory.backend == "ray":
            stop_memory_service(cfg.memory.service, cfg.memory.num_shards)


def stop_memory_service(service: str, num_shards: int) -> None:
    """Kill a trial's shard actors (detached: they would outlive it)."""
    import ray

    for i in range(num_shards):
        try:
            ray.kill(ray.get_actor(shard_name(service, i), namespace=RAY_NAMESPACE))
        except ValueError:
            pass  # never started (the trial failed before its first forward pass)


# -- early stopping that survives a resume -------------------------------------------------------------------------
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


def _resumable_asha(state_dir: str, **kwargs):
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


# -- progress -------------------------------------------------------------------------------------------------------
def _progress_callback(tcfg: TuneConfig, say: Callable[[str], None]):
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


# -- the sweep ------------------------------------------------------------------------------------------------------
@dataclass
class TrialRow:
    trial_id: str
    status: str  # done | stopped early | failed
    steps: int
    config: dict[str, Any]
    value: float | None  # the best value of the metric it reported
    checkpoint: str | None  # saved at that step
    error: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Sweep:
    metric: str
    mode: str
    output_dir: str  # a folder or a URI
    trials: list[TrialRow]
    best: TrialRow | None
    seconds: float
    keys: list[str]

    def to_json(self) -> dict[str, Any]:
        def row(t: TrialRow) -> dict[str, Any]:
            return {"trial_id": t.trial_id, "config": t.config, self.metric: t.value, "steps": t.steps,
                    "status": t.status, "checkpoint": t.checkpoint, "error": t.error}

        best = None if self.best is None else {"trial_id": self.best.trial_id, "config": self.best.config,
                                               self.metric: self.best.value, "checkpoint": self.best.checkpoint}
        return {"metric": self.metric, "mode": self.mode, "trials": [row(t) for t in self.trials], "best": best,
                "seconds": self.seconds}


# What a trial's own Tune actor reserves: no CPU (it only starts the trial's Train run and waits for it), so that
# N trials of W one-CPU workers fit N × W CPUs — with 0.01 CPU each, two one-worker trials need 2.02 of a 2-CPU
# machine's 2 and the second trial's worker can never start. (Tune needs a non-empty request: one byte of memory.)
TRIAL_ACTOR = {"CPU": 0, "memory": 1}


@dataclass(frozen=True)
class TrialPlan:
    """How many trials run at once and what each one's data stream reserves, decided once for the sweep (a trial
    deciding from what is free when it starts races the other trials for the same CPUs)."""

    concurrency: int
    data_cpus: tuple[float, int] | None  # (CPUs per read task, tasks) where data.cpus_per_task is not set
    note: str | None = None  # why the asked concurrency was lowered


def plan_trials(base: RecipeConfig, tcfg: TuneConfig, cluster: dict[str, float], fixed: bool) -> TrialPlan:
    """A trial holds its Train workers' CPUs and its data tasks' (Tune reserves neither: ray issue #54305); the
    cluster fits CPUs // that many trials at once (tune.max_concurrent_trials=0), and each trial's data tasks get what
    is left of its share: a whole CPU when one is, half of one, or none (they then share the workers' CPUs, as a plain
    run on a laptop does). `fixed`: the cluster cannot grow (a local Ray), so an asked concurrency that does not fit
    is lowered to one that does — else the extra trials' workers wait 60 s and fail."""
    cpus = cluster.get("CPU", 0.0)
    workers = max(1, base.train.num_workers) * base.train.cpus_per_worker
    own_data = (base.data.cpus_per_task * max(1, base.data.read_tasks)
                if base.data.cpus_per_task is not None else None)
    per_trial = workers + (own_data or 0.0)
    fits = max(1, int((cpus + 1e-9) // per_trial))
    if base.train.use_gpu is True or (base.train.use_gpu == "auto" and cluster.get("GPU", 0)):
        fits = max(1, min(fits, int(cluster.get("GPU", 0) // max(1, base.train.num_workers))))
    concurrency, note = tcfg.max_concurrent_trials or fits, None
    if fixed and concurrency > fits:
        note = (f"tune.max_concurrent_trials={concurrency}: the local Ray's {cpus:g} CPUs fit {fits} trial(s) of "
                f"{workers:g} worker CPU(s)" + (f" + {own_data:g} data CPU(s)" if own_data else "")
                + f"; running {fits} at once")
        concurrency = fits
    data_cpus = None
    if own_data is None:
        spare = cpus / concurrency - workers
        per_task = 1.0 if spare >= 1 else 0.5 if spare >= 0.5 else 0.0
        data_cpus = (per_task, max(1, int(spare // per_task)) if per_task else 1)
    return TrialPlan(concurrency, data_cpus, note)


def output_dir_of(tcfg: TuneConfig) -> str:
    return tcfg.output_dir.rstrip("/") if storage.is_uri(tcfg.output_dir) else str(Path(tcfg.output_dir).resolve())


def sweep_lock(output_dir: str):
    """One command at a time per sweep (as per training folder, hybrid/training/train.py:output_dir_lock): a
    `--resume` while the sweep runs would train the same trials into the same folders. A URI's lock is a local file
    named after it (one sweep per URI, per machine). The kernel drops the lock with the process."""
    if storage.is_uri(output_dir):
        lock = ckpt_io.staging_dir(output_dir).with_name(ckpt_io.staging_dir(output_dir).name + ".sweep.lock")
    else:
        lock = Path(output_dir) / ".sweep.lock"
    return exclusive_lock(lock, f"tune.output_dir {storage.shown(output_dir)}", wait=False)


def holds_sweep(output_dir: str) -> bool:
    """A sweep started here (Tune saved its state): `--resume` continues it, a new sweep is refused. A folder where a
    sweep failed before Tune started (sweep.yaml and nothing else) holds none, and is reused."""
    from ray import tune

    return storage.exists(storage.join(output_dir, "sweep.yaml")) and tune.Tuner.can_restore(
        storage.join(output_dir, STATE))


def run_sweep(base: RecipeConfig, tcfg: TuneConfig, resume: bool = False,
              say: Callable[[str], None] = print) -> Sweep:
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
                raise HybridError(f"{shown}: holds a sweep already; continue it with --resume, or choose another "
                                  f"tune.output_dir")
            if tcfg.objective == "recall":
                base = recall_base(base, tcfg, output_dir, say)
                check_sweep(base, tcfg)
        # Train V2's placement-group cleaner needs the dashboard's State API; the trials' own logs stay in Ray's log
        # folder (the progress lines below say what happens, a failed trial's error is in the results)
        init_ray(include_dashboard=True, log_to_driver=False)
        fixed = fixed_resources()
        if fixed is not None:
            check_fits(base.model_copy(update={"train": base.train.model_copy(
                update={"num_workers": max(1, base.train.num_workers)})}), what="each trial's ")
        import ray

        plan = plan_trials(base, tcfg, fixed or ray.cluster_resources(), fixed is not None)
        if plan.note:
            say(plan.note)
        tuner = _tuner(base, tcfg, output_dir, plan, resume, say)
        if not resume:
            storage.write_text(saved, yaml.safe_dump({"base": base.model_dump(mode="json"),
                                                     "tune": tcfg.model_dump(mode="json")}, sort_keys=False))
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


def _tuner(base: RecipeConfig, tcfg: TuneConfig, output_dir: str, plan: TrialPlan, resume: bool,
           say: Callable[[str], None]):
    """Tune's Tuner for the sweep (restored from its state on resume)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    state = storage.join(output_dir, STATE)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_json=base.model_dump_json(), tune_json=tcfg.model_dump_json(),
                             output_dir=output_dir, data_cpus=plan.data_cpus), TRIAL_ACTOR)
    if resume:  # (with the callbacks it was started with: Tune saved them)
        return tune.Tuner.restore(state, trainable=trainable, resume_unfinished=True, resume_errored=True)
    scheduler = (_resumable_asha(state, time_attr="step", grace_period=tcfg.grace_steps,
                                 reduction_factor=tcfg.reduction_factor, max_t=tcfg.max_iters)
                 if tcfg.scheduler == "asha" else None)
    run_config = tune.RunConfig(name=STATE, storage_path=output_dir, verbose=0,
                                callbacks=[_progress_callback(tcfg, say)])
    return tune.Tuner(
        trainable, param_space=param_space(tcfg), run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=tcfg.metric, mode=tcfg.mode, scheduler=scheduler, num_samples=tcfg.num_samples,
            # (Tune applies max_concurrent_trials to a searcher it makes itself, not to one given to it)
            search_alg=BasicVariantGenerator(random_state=tcfg.seed, max_concurrent=plan.concurrency),
            trial_name_creator=trial_name, trial_dirname_creator=trial_name))


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


RECALL_TASKS = {"key_value": "kv", "passkey": "passkey", "two_hop": "facts"}


def recall_base(base: RecipeConfig, tcfg: TuneConfig, output_dir: str, say: Callable[[str], None]) -> RecipeConfig:
    """`tune.objective=recall`: the recall task's data (<output_dir>/recall: train.jsonl, a length mix of 1x, 2x and
    `length`x with the chain aid; val.jsonl, `length`x from the validation stream) and the shared in-window base
    (hybrid/training/recall.py's stage 1, trained once, here), and the trials' config: the recall recipe's model
    and optimiser (docs/recall.md) starting from the base, validated every `grace_steps` steps."""
    if storage.is_uri(output_dir):
        raise ConfigError(f"tune.objective=recall: tune.output_dir={output_dir} must be a local folder (the recall "
                          f"data and the base are made on this machine)")
    o = tcfg.recall
    task = RECALL_TASKS[o.task]
    recipe = rc.RecallRecipe(tasks=[task], base_steps=o.base_steps, base_rounds=1, val_examples=o.eval_examples)
    folder = Path(output_dir) / "recall"
    max_length = max(2, o.length) * recipe.segment_length
    mix = {1: 1.0, 2: 1.0, o.length: 2.0} if o.length > 2 else {1: 1.0, max(2, o.length): 1.0}
    say(f"recall objective: {o.task} at {o.length}x the window; the shared base ({o.base_steps} in-window steps) "
        f"in {folder}")
    examples = rc.training_examples(recipe, -(-o.train_examples // recipe.batch_size), mix, o.seed * 7919 + 2,
                                    chain_separator=recipe.chain_separator)
    train_file, val_file = folder / "train.jsonl", folder / "val.jsonl"
    rc.write_jsonl(train_file, [e.record() for e in examples[:o.train_examples]]
                   + rc.vocabulary_records(examples, recipe.segment_length, o.seed))
    rc.write_jsonl(val_file, [e.record() for e in rc.eval_examples(recipe, task, o.length, o.eval_examples, o.seed,
                                                                   "val")])
    trained = rc.train_base(recipe, base, folder, o.seed, max_length, say=say)
    values = rc.stage_values(recipe, "both", folder / "unused", train_file, tcfg.max_iters, o.seed + 1, max_length,
                             init_from=trained.checkpoint)
    values.update({"data.validation": str(val_file), "train.eval_every": tcfg.grace_steps,
                   "train.log_every": max(1, tcfg.grace_steps), "train.resume": "auto"})
    for key in ("train.output_dir", "train.max_iters", *tcfg.space):
        values.pop(key, None)
    return with_values(base, values, where="tune.objective=recall")


def _read_sweep(path: str) -> tuple[RecipeConfig, TuneConfig]:
    try:
        data = yaml.safe_load(storage.read_text(path))
        return RecipeConfig.model_validate(data["base"]), TuneConfig.model_validate(data["tune"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValidationError) as e:
        raise HybridError(f"{storage.shown(path)}: not a readable sweep record ({library_message(e, path)})") \
            from None


def collect(grid, tcfg: TuneConfig, output_dir: str, seconds: float) -> Sweep:
    """One row per trial from Tune's results: its best reported value, the step and checkpoint of it."""
    rows = []
    for result in grid:
        name = storage.base_name(result.path)
        frame = result.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if frame is not None and tcfg.metric in frame and "step" in frame:
            curve = [(int(s), float(v)) for s, v in zip(frame["step"], frame[tcfg.metric])
                     if v is not None and not (isinstance(v, float) and math.isnan(v))]
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
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        nxt = getattr(error, "cause", None) or error.__cause__
        failures = getattr(error, "worker_failures", None)
        if failures:
            nxt = next(iter(failures.values()))
        if nxt is None:
            break
        error = nxt
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


def write_results(sweep: Sweep, tcfg: TuneConfig) -> None:
    out = sweep.output_dir
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial_id", "status", "steps", *sweep.keys, sweep.metric, "checkpoint", "error"])
    for t in sweep.trials:
        writer.writerow([t.trial_id, t.status, t.steps, *[t.config.get(k) for k in sweep.keys],
                         "" if t.value is None else f"{t.value:.6g}", t.checkpoint or "", t.error or ""])
    storage.write_text(storage.join(out, "results.csv"), buf.getvalue())
    if sweep.best is not None:
        cfg_path = storage.join(out, "trials", sweep.best.trial_id, "config.yaml")
        if storage.exists(cfg_path):
            storage.write_text(storage.join(out, "best.yaml"), storage.read_text(cfg_path))
    storage.write_bytes(storage.join(out, "sweep.png"), plot(sweep))


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else json.dumps(value, sort_keys=True)


def _axis(values: list[Any]) -> list[Any]:
    """A swept key's values in axis order: numbers by value, then anything else (`bpe`, `word`, null) as text — a
    categorical axis, one tick per value."""
    def order(v):
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))

    return sorted({_hashable(v) for v in values}, key=order)


def plot(sweep: Sweep) -> bytes:
    """The metric over the first two swept keys (a grid of the trials' best values) and every trial's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grid, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sweep.keys[:2]
    scored = [t for t in sweep.trials if t.value is not None]
    if len(keys) == 2 and scored:
        xs = _axis([t.config[keys[0]] for t in scored])
        ys = _axis([t.config[keys[1]] for t in scored])
        import numpy as np

        grid = np.full((len(ys), len(xs)), np.nan)
        for t in scored:
            grid[ys.index(_hashable(t.config[keys[1]])), xs.index(_hashable(t.config[keys[0]]))] = t.value
        im = ax_grid.imshow(grid, origin="lower", cmap="viridis_r" if sweep.mode == "min" else "viridis")
        ax_grid.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax_grid.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax_grid.set_xlabel(keys[0])
        ax_grid.set_ylabel(keys[1])
        for (j, i), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax_grid.text(i, j, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax_grid, label=f"best {sweep.metric}")
    else:
        ax_grid.bar([t.trial_id for t in scored], [t.value for t in scored])
        ax_grid.set_ylabel(f"best {sweep.metric}")
        ax_grid.tick_params(axis="x", rotation=45)
    for t in sweep.trials:
        if t.curve:
            label = ", ".join(f"{k.split('.')[-1]}={t.config[k]}" for k in sweep.keys)
            ax_curves.plot([s for s, _ in t.curve], [v for _, v in t.curve], marker=".", label=label)
    ax_curves.set_xlabel("step")
    ax_curves.set_ylabel(sweep.metric)
    if any(t.curve for t in sweep.trials):
        ax_curves.legend(fontsize=7)
    fig.suptitle(f"hybrid tune: {sweep.metric} ({sweep.mode})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
