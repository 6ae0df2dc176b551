"""One trial: its name, its training config, the Tune function trainable that runs it on Ray Train, and what it
reserves (`TrialPlan`, decided once for the sweep).

A trial builds the run's `TorchTrainer` (Train V2) with `TuneReportCallback`: the recipe's reports (step, val_loss,
val_exact_match, train_loss, the checkpoint path) reach Tune. Its name is `trial_<n>` (Tune's counter, no
timestamp); its training output folder is <output_dir>/trials/<name>, so a retried or resumed trial resumes from its
own checkpoints; with `memory.backend=ray` its memory service is its own, and its shard actors are killed when it
ends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from hybrid.config.recipe import RecipeConfig, with_values
from hybrid.config.tune import TuneConfig
from hybrid.core import storage
from hybrid.memory.ray_store import RAY_NAMESPACE, shard_name
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import fit_on_ray, prepare

# A trial's worker group that does not start within Ray Train's 60 s (other trials hold the CPUs) is started again
# this many times — waiting is what it needs, not being recorded `failed`
START_RETRIES = 5


def trial_name(trial) -> str:
    """`trial_<n>`: Tune's counter (ids look like `a1b2c_00003`; the prefix is random, the counter is not)."""
    return f"trial_{trial.trial_id.rsplit('_', 1)[-1]}"


def service_name(base: str, output_dir: str, trial: str) -> str:
    """A memory service of the trial's own: concurrent trials (and sweeps) never share or reset shards."""
    return f"{base}-{hashlib.blake2b(str(output_dir).encode(), digest_size=4).hexdigest()}-{trial}"


def trial_config(
    base: RecipeConfig,
    tcfg: TuneConfig,
    values: dict[str, Any],
    name: str,
    output_dir: str,
    data_cpus: tuple[float, int] | None = None,
) -> RecipeConfig:
    """The trial's training config. `data_cpus`: (CPUs per read task, tasks) its data stream reserves, decided for
    the whole sweep (`TrialPlan`), where data.cpus_per_task is not set."""
    cfg = with_values(base, values)
    train_update = {
        "max_iters": tcfg.max_iters,
        "output_dir": storage.join(output_dir, "trials", name),
        "resume": "auto",
        "num_workers": max(1, cfg.train.num_workers),
    }
    if tcfg.metric in ("val_loss", "val_exact_match"):
        train_update["best_by"] = tcfg.metric  # the checkpoint kept as `best` is the one at the trial's best metric
    updates = {"train": cfg.train.model_copy(update=train_update)}
    if data_cpus is not None and cfg.data.cpus_per_task is None:
        updates["data"] = cfg.data.model_copy(
            update={"cpus_per_task": data_cpus[0], "read_tasks": cfg.data.read_tasks or data_cpus[1]}
        )
    if cfg.memory.backend == "ray":
        updates["memory"] = cfg.memory.model_copy(
            update={"service": service_name(cfg.memory.service, output_dir, name)}
        )
    return cfg.model_copy(update=updates)


def run_trial(
    config: dict[str, Any], base_json: str, tune_json: str, output_dir: str, data_cpus: tuple[float, int] | None = None
) -> None:
    """The Tune trainable: this trial's training run on Ray Train, reporting through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = tune.get_context().get_trial_name()
    cfg = trial_config(
        RecipeConfig.model_validate_json(base_json),
        TuneConfig.model_validate_json(tune_json),
        config,
        name,
        output_dir,
        data_cpus,
    )
    state = ckpt_io.latest_state(cfg.train.output_dir)
    if state is not None and state["step"] >= cfg.train.max_iters and state.get("metrics"):
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
    own_data = base.data.cpus_per_task * max(1, base.data.read_tasks) if base.data.cpus_per_task is not None else None
    per_trial = workers + (own_data or 0.0)
    fits = max(1, int((cpus + 1e-9) // per_trial))
    if base.train.use_gpu is True or (base.train.use_gpu == "auto" and cluster.get("GPU", 0)):
        fits = max(1, min(fits, int(cluster.get("GPU", 0) // max(1, base.train.num_workers))))
    concurrency, note = tcfg.max_concurrent_trials or fits, None
    if fixed and concurrency > fits:
        note = (
            f"tune.max_concurrent_trials={concurrency}: the local Ray's {cpus:g} CPUs fit {fits} trial(s) of "
            f"{workers:g} worker CPU(s)"
            + (f" + {own_data:g} data CPU(s)" if own_data else "")
            + f"; running {fits} at once"
        )
        concurrency = fits
    data_cpus = None
    if own_data is None:
        spare = cpus / concurrency - workers
        per_task = 1.0 if spare >= 1 else 0.5 if spare >= 0.5 else 0.0
        data_cpus = (per_task, max(1, int(spare // per_task)) if per_task else 1)
    return TrialPlan(concurrency, data_cpus, note)
