"""A resumed sweep's generator agrees with the trials Tune restored, whichever of Tune's two state files (the trials,
the generator) a kill caught mid-upload. Tune's real generator, trials and state files; no Ray needed."""

from __future__ import annotations

import json

import pytest
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from hybrid.core.errors import HybridError
from hybrid.tuning.scheduler import resumable_variants, stored_trials


def trainable(config):  # never run: the generator only names it
    pass


SPACE = {"lr": tune.grid_search([0.1, 0.2, 0.3]), "x": tune.uniform(0, 1)}


def started(make):
    gen = make()
    gen.add_configurations({"grid": {"run": trainable, "config": SPACE, "num_samples": 2}})  # 6 trials
    return gen


def save_trials(folder, trials, statuses):
    """Tune's experiment state as its controller writes it (the trials' own JSON states)."""
    for trial, status in zip(trials, statuses):
        trial.status = status
        trial.invalidate_json_state()
    state = {"trial_data": [t.get_json_state() for t in trials], "runner_data": {}, "stats": {}}
    (folder / "experiment_state-2026-12-07_00-00-00.json").write_text(json.dumps(state))


def restored(make, folder):
    gen = make()  # as Tuner.restore unpickles it: made, never given the space
    gen.restore_from_dir(str(folder))
    return gen


def drain(gen, live):
    """Run the restored generator as Tune would, one trial at a time: finish the live trials, take the next."""
    made = []
    for _ in range(20):
        trial = gen.next_trial()
        if trial is None:
            if not live:
                break
            gen.on_trial_complete(live.pop())
            continue
        made.append(trial)
        live.append(trial.trial_id)
    return made


def one_at_a_time():
    return resumable_variants(seed=3, max_concurrent=1)


def tune_own():
    return BasicVariantGenerator(random_state=3, max_concurrent=1)


@pytest.mark.parametrize("make", [one_at_a_time, tune_own], ids=["ours", "tune"])
def test_a_generator_state_older_than_the_trials(tmp_path, make):
    """Saved when trial 1 ran; the trials were saved later (0 and 1 ended, 2 running). Tune's own generator waits
    for trial 1 forever (the hang seen here); ours reruns 2 and makes 3, 4 and 5, each once."""
    gen = started(make)
    t0 = gen.next_trial()
    gen.on_trial_complete(t0.trial_id)
    t1 = gen.next_trial()
    gen.save_to_dir(str(tmp_path), "2026-12-07_00-00-00")  # the stale generator state
    gen.on_trial_complete(t1.trial_id)
    t2 = gen.next_trial()
    rest = [t2] + drain(gen, [t2.trial_id])
    save_trials(tmp_path, [t0, t1, t2], ["TERMINATED", "TERMINATED", "RUNNING"])

    again = restored(make, tmp_path)
    made = drain(again, [t2.trial_id])  # Tune reruns trial 2 (its live trial), then asks for more
    if make is tune_own:
        assert made == [] and not again.is_finished()  # the hang: nothing to run, never finished
        return
    assert [(t.trial_id, t.config) for t in made] == [(t.trial_id, t.config) for t in rest[1:]]
    assert again.is_finished()


def test_a_generator_state_newer_than_the_trials(tmp_path):
    """Saved after trial 2 was made; the trials were saved before (trial 2 missing): ours makes trial 2 again, with
    its id and its sampled values; Tune's own waits for a trial 2 nobody runs (and had skipped that grid point)."""
    gen = started(one_at_a_time)
    t0 = gen.next_trial()
    gen.on_trial_complete(t0.trial_id)
    t1 = gen.next_trial()
    gen.on_trial_complete(t1.trial_id)
    t2 = gen.next_trial()
    gen.save_to_dir(str(tmp_path), "2026-12-07_00-00-00")
    rest = [t2] + drain(gen, [t2.trial_id])
    save_trials(tmp_path, [t0, t1], ["TERMINATED", "TERMINATED"])

    made = drain(restored(one_at_a_time, tmp_path), [])
    assert [(t.trial_id, t.config) for t in made] == [(t.trial_id, t.config) for t in rest]
    tune_gen = restored(tune_own, tmp_path)  # (a state file of ours is Tune's generator's __dict__ and a seed)
    assert drain(tune_gen, []) == [] and not tune_gen.is_finished()


def test_errored_and_pending_trials_are_the_live_ones_and_a_foreign_trial_is_one_line(tmp_path):
    gen = started(one_at_a_time)
    trials = []
    for _ in range(3):
        trials.append(gen.next_trial())
        gen.on_trial_complete(trials[-1].trial_id)
    gen.save_to_dir(str(tmp_path), "2026-12-07_00-00-00")
    save_trials(tmp_path, trials, ["TERMINATED", "ERROR", "PENDING"])
    ids = [t.trial_id for t in trials]
    assert stored_trials(str(tmp_path)) == {ids[0]: "TERMINATED", ids[1]: "ERROR", ids[2]: "PENDING"}
    again = restored(one_at_a_time, tmp_path)
    assert again._live_trials == {ids[1], ids[2]}
    assert again.next_trial() is None  # both rerun before a new one starts

    trials[2].trial_id = "other_00002"
    save_trials(tmp_path, trials, ["TERMINATED", "TERMINATED", "TERMINATED"])
    with pytest.raises(HybridError, match=r"other_00002.*new tune.output_dir"):
        restored(one_at_a_time, tmp_path)
