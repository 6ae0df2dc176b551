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

from hybrid.config.recipe import SECTIONS, RecipeConfig, with_values
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.core.errors import ConfigError, HybridError
from hybrid.core.redact import library_message
from hybrid.core.ray_utils import init_ray
from hybrid.memory.ray_store import RAY_NAMESPACE, shard_name
from hybrid.training import checkpoints as ckpt_io
from hybrid.training import recall as rc
from hybrid.training.train import fit_on_ray, prepare

STATE = "tune"  # Tune's own folder under output_dir


# -- the space ------------------------------------------------------------------------------------------------------
def check_space(base: RecipeConfig, tcfg: TuneConfig) -> None:
    """Every key is a training-config key and every value it can take is valid — before any trial starts."""
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
                 output_dir: str) -> RecipeConfig:
    cfg = with_values(base, values)
    train_update = {"max_iters": tcfg.max_iters, "output_dir": storage.join(output_dir, "trials", name), "resume": "auto",
                    "num_workers": max(1, cfg.train.num_workers)}
    if tcfg.metric in ("val_loss", "val_exact_match"):
        train_update["best_by"] = tcfg.metric  # the checkpoint kept as `best` is the one at the trial's best metric
    updates = {"train": cfg.train.model_copy(update=train_update)}
    if cfg.memory.backend == "ray":
        updates["memory"] = cfg.memory.model_copy(update={"service": service_name(cfg.memory.service, output_dir,
                                                                                     name)})
    return cfg.model_copy(update=updates)


# -- one trial ------------------------------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], base_json: str, tune_json: str, output_dir: str) -> None:
    """The Tune trainable: this trial's training run on Ray Train, reporting through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = tune.get_context().get_trial_name()
    cfg = trial_config(RecipeConfig.model_validate_json(base_json), TuneConfig.model_validate_json(tune_json),
                       config, name, output_dir)
    state = ckpt_io.latest_state(cfg.train.output_dir)
    if state is not None:
        if state["step"] >= cfg.train.max_iters and state.get("metrics"):
            # finished before a kill reached Tune's state: nothing to train, report where it ended so Tune can
            # close the trial (a trial that reports nothing is an error to Tune)
            tune.report({**state["metrics"], "best_val_loss": state.get("best_val_loss")})
            return
    try:
        spec = prepare(cfg, cfg.train.num_workers, use_ray=True, quiet=True)
        fit_on_ray(spec, callbacks=[TuneReportCallback()])
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


def concurrency(base: RecipeConfig, tcfg: TuneConfig) -> int:
    """tune.max_concurrent_trials, or (0) as many trials as the cluster fits: Tune does not reserve the resources
    of the trials' Train workers itself."""
    if tcfg.max_concurrent_trials:
        return tcfg.max_concurrent_trials
    import ray

    res = ray.cluster_resources()
    workers = max(1, base.train.num_workers)
    fits = res.get("CPU", 1) / (workers * base.train.cpus_per_worker)
    if base.train.use_gpu is True or (base.train.use_gpu == "auto" and res.get("GPU", 0)):
        fits = min(fits, res.get("GPU", 0) / workers)
    return max(1, int(fits))


def run_sweep(base: RecipeConfig, tcfg: TuneConfig, resume: bool = False,
              say: Callable[[str], None] = print) -> Sweep:
    """Run (or resume) the sweep and write its results; see the module docstring."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t0 = time.time()
    output_dir = (tcfg.output_dir.rstrip("/") if storage.is_uri(tcfg.output_dir)
                  else str(Path(tcfg.output_dir).resolve()))
    state = storage.join(output_dir, STATE)
    saved = storage.join(output_dir, "sweep.yaml")
    shown = storage.shown(output_dir)
    if resume:
        if not storage.exists(saved) or not tune.Tuner.can_restore(state):
            raise HybridError(f"{shown}: no sweep to resume (run `hybrid tune` without --resume first)")
        base, tcfg = _read_sweep(saved)
    else:
        if storage.exists(state) or storage.exists(saved):
            raise HybridError(f"{shown}: holds a sweep already; continue it with --resume, or choose another "
                              f"tune.output_dir")
        if tcfg.objective == "recall":
            base = recall_base(base, tcfg, output_dir, say)
        if base.data.train is None:
            raise ConfigError("data.train: the trials need training data (data.train=PATH)")
        if tcfg.metric in ("val_loss", "val_exact_match") and not base.data.validation:
            raise ConfigError(f"tune.metric={tcfg.metric}: the trials need validation data (data.validation=PATH)")
        check_space(base, tcfg)
        storage.write_text(saved, yaml.safe_dump({"base": base.model_dump(mode="json"),
                                                 "tune": tcfg.model_dump(mode="json")}, sort_keys=False))
    # Train V2's placement-group cleaner needs the dashboard's State API; the trials' own logs stay in Ray's log
    # folder (the progress lines below say what happens, a failed trial's error is in the results)
    init_ray(include_dashboard=True, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_json=base.model_dump_json(), tune_json=tcfg.model_dump_json(),
                             output_dir=output_dir), {"CPU": 0.01})
    run_config = tune.RunConfig(name=STATE, storage_path=output_dir, verbose=0,
                                callbacks=[_progress_callback(tcfg, say)])
    if resume:
        tuner = tune.Tuner.restore(state, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (_resumable_asha(state, time_attr="step", grace_period=tcfg.grace_steps,
                                     reduction_factor=tcfg.reduction_factor, max_t=tcfg.max_iters)
                     if tcfg.scheduler == "asha" else None)
        tuner = tune.Tuner(
            trainable, param_space=param_space(tcfg), run_config=run_config,
            tune_config=tune.TuneConfig(
                metric=tcfg.metric, mode=tcfg.mode, scheduler=scheduler, num_samples=tcfg.num_samples,
                # (Tune applies max_concurrent_trials to a searcher it makes itself, not to one given to it)
                search_alg=BasicVariantGenerator(random_state=tcfg.seed, max_concurrent=concurrency(base, tcfg)),
                trial_name_creator=trial_name, trial_dirname_creator=trial_name))
    # one line per failed trial (the progress line above, the error column of the results), not Tune's traceback
    # on stderr for each: the whole of it stays in the trial's error.txt under <output_dir>/tune
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    grid = tuner.fit()
    sweep = collect(grid, tcfg, output_dir, time.time() - t0)
    write_results(sweep, tcfg)
    if sweep.trials and all(t.status == "failed" for t in sweep.trials):
        raise HybridError(f"every trial failed; the first: {sweep.trials[0].error}")
    return sweep


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
        config = {k: result.config.get(k) for k in tcfg.space}
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


def plot(sweep: Sweep) -> bytes:
    """The metric over the first two swept keys (a grid of the trials' best values) and every trial's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grid, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sweep.keys[:2]
    scored = [t for t in sweep.trials if t.value is not None]
    if len(keys) == 2 and scored:
        xs = sorted({t.config[keys[0]] for t in scored}, key=float)
        ys = sorted({t.config[keys[1]] for t in scored}, key=float)
        import numpy as np

        grid = np.full((len(ys), len(xs)), np.nan)
        for t in scored:
            grid[ys.index(t.config[keys[1]]), xs.index(t.config[keys[0]])] = t.value
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
