"""Training in-process (num_workers=0: the same loop, no worker group), evaluation, generation, resume after a
real SIGKILL, and what happens with bad data and damaged checkpoints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybrid.cli import run_command
from hybrid.cli.config import load_config
from hybrid.cli.train import register
from hybrid.core.errors import HybridError
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.evaluate import evaluate
from hybrid.training.train import train

ROOT = Path(__file__).resolve().parents[3]
DIE_AFTER = str(Path(__file__).with_name("train_then_die.py"))  # a training run that SIGKILLs itself


def cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return run_command(args.func, args)


@pytest.fixture(scope="module")
def trained(io_data, tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("run") / "train"
    cfg = load_config(tiny_overrides(io_data, out, "train.max_iters=6", "train.eval_every=2", "train.keep_last=1"))
    return train(cfg.recipe(), quiet=True)


def test_train_writes_checkpoints_best_and_metrics(trained):
    out = trained.output_dir
    names = [p.name for p in ckpt_io.list_checkpoints(out)]
    best = trained.best_checkpoint
    assert names[-1] == "checkpoint_step_000006" and trained.checkpoint.name == names[-1]
    assert best is not None and set(names) == {best.name, names[-1]}  # keep_last=1, plus the best
    state = ckpt_io.read_trainer_state(best)
    assert state["best_val_loss"] == min(
        json.loads(x)["val_loss"]
        for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if "val_loss" in x
    )
    for f in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "config.yaml", "tokenizer.json"):
        assert (trained.checkpoint / f).is_file(), f
    assert not list(out.glob(".tmp-*"))
    losses = [
        json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if '"loss"' in x
    ]
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    assert trained.metrics["step"] == 6 and trained.data_counts["train"]["examples"] == 48


def test_eval_and_generate_commands(trained, io_data, tmp_path, capsys):
    report = tmp_path / "eval.json"
    assert (
        cli(
            [
                "eval",
                "--checkpoint",
                str(trained.output_dir),
                "--test_data",
                str(io_data["validation"]),
                "--json",
                str(report),
                "--max-generate",
                "2",
            ]
        )
        == 0
    )
    metrics = json.loads(report.read_text())
    assert metrics["examples"] == 8 and metrics["generated"] == 2
    assert metrics["checkpoint"] == str(trained.best_checkpoint)
    assert abs(metrics["loss"] - ckpt_io.read_trainer_state(trained.best_checkpoint)["best_val_loss"]) < 1e-4
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
    assert "exact match" in capsys.readouterr().out
    assert (
        cli(["generate", "--checkpoint", str(trained.checkpoint), "--prompt", "alpha beta", "--max-new-tokens", "3"])
        == 0
    )
    out = tmp_path / "gen.jsonl"
    assert (
        cli(
            [
                "generate",
                "--checkpoint",
                str(trained.checkpoint),
                "--input-file",
                str(io_data["validation"]),
                "--max-new-tokens",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 8
    only_inputs = tmp_path / "inputs.jsonl"
    only_inputs.write_text('{"input": "alpha"}\n{"text": "beta"}\n')
    assert cli(["generate", "--checkpoint", str(trained.checkpoint), "--input-file", str(only_inputs)]) == 2
    assert "inputs.jsonl:2: record has no string 'input'" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(io_data, tmp_path, tiny_overrides):
    """A run SIGKILLed right after its step-4 checkpoint, then resumed, ends with the same weights as a run that
    was never interrupted (same seed)."""
    whole = train(
        load_config(tiny_overrides(io_data, tmp_path / "whole", "train.max_iters=8", "train.eval_every=4")).recipe(),
        quiet=True,
    )
    overrides = tiny_overrides(io_data, tmp_path / "killed", "train.max_iters=8", "train.eval_every=4")
    first = subprocess.run([sys.executable, DIE_AFTER, "4", *overrides], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == -9, first.stderr[-2000:]  # really killed
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "killed")] == ["checkpoint_step_000004"]
    second = subprocess.run(
        [sys.executable, "-m", "hybrid", "train", *overrides], capture_output=True, text=True, cwd=ROOT
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout
    a = load_file(whole.checkpoint / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoint_step_000008" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # and without the resume the weights would differ (the check has teeth)
    c = load_file(tmp_path / "killed" / "checkpoint_step_000004" / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_data_fails_before_training(io_data, tmp_path, tiny_overrides):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "a"}\n')
    cfg = load_config(tiny_overrides(io_data, tmp_path / "out", f"data.train={bad}"))
    with pytest.raises(HybridError, match=r"bad\.jsonl:2: record has no 'output'"):
        train(cfg.recipe())
    cfg = load_config(tiny_overrides(io_data, tmp_path / "out", f"data.validation={tmp_path / 'missing'}"))
    with pytest.raises(HybridError, match="missing: no such file"):
        train(cfg.recipe())
    assert not (tmp_path / "out").exists()  # nothing half-written
    rc = cli(["train", *tiny_overrides(io_data, tmp_path / "out", "train.resume=/nowhere")])
    assert rc == 2


def test_resume_with_another_model_is_a_config_error(trained, io_data, tmp_path, tiny_overrides):
    cfg = load_config(
        tiny_overrides(io_data, tmp_path / "o", f"train.resume={trained.checkpoint}", "model.hidden_size=32")
    )
    with pytest.raises(HybridError, match=r"model\.hidden_size: 32 here, but .* was trained with 64"):
        train(cfg.recipe(), quiet=True)


def test_corrupt_checkpoints_are_clear_errors(trained, io_data, tmp_path, tiny_overrides):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained.checkpoint, ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HybridError, match=r"ck: corrupt checkpoint"):
        evaluate(ck, io_data["validation"])
    (ck / "trainer_state.json").unlink()
    with pytest.raises(HybridError, match=r"not a complete checkpoint \(missing trainer_state\.json\)"):
        evaluate(ck, io_data["validation"])
    shutil.rmtree(ck)
    shutil.copytree(trained.checkpoint, ck)
    (ck / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(HybridError, match=r"optimizer\.pt: corrupt checkpoint file"):
        ckpt_io.load_state_file(ck / "optimizer.pt")
    # resuming from it fails with that message, not a traceback
    cfg = load_config(tiny_overrides(io_data, tmp_path / "resumed", f"train.resume={ck}", "train.max_iters=7"))
    with pytest.raises(HybridError, match=r"optimizer\.pt: corrupt checkpoint file"):
        train(cfg.recipe(), quiet=True)


def test_retention_keeps_best_and_last(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / ckpt_io.checkpoint_name(step)).mkdir()
        (tmp_path / ckpt_io.checkpoint_name(step) / ckpt_io.TRAINER_STATE).write_text(f'{{"step": {step}}}\n')
    (tmp_path / ".tmp-checkpoint_step_000010").mkdir()  # left by a crash mid-write
    ckpt_io.set_best(tmp_path, tmp_path / ckpt_io.checkpoint_name(4))
    ckpt_io.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == [
        "checkpoint_step_000004",
        "checkpoint_step_000006",
        "checkpoint_step_000008",
    ]
    assert ckpt_io.best_checkpoint(tmp_path).name == "checkpoint_step_000004"
    assert not (tmp_path / ".tmp-checkpoint_step_000010").exists()
    ckpt_io.set_best(tmp_path, tmp_path / ckpt_io.checkpoint_name(8))  # swapped atomically (rename of a symlink)
    ckpt_io.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["checkpoint_step_000006", "checkpoint_step_000008"]


def _loss_curve(out):
    """The training losses a run logged, step by step."""
    return [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]


def test_gradient_accumulation_equals_a_bigger_batch(io_data, tmp_path, tiny_overrides):
    """2 micro-batches of 2 accumulated = one batch of 4: same examples per step, same normalisation."""
    common = ["train.max_iters=3", "train.eval_every=3", "train.log_every=1", "data.max_length=32"]
    big = train(
        load_config(tiny_overrides(io_data, tmp_path / "big", *common, "train.batch_size=4")).recipe(), quiet=True
    )
    acc = train(
        load_config(
            tiny_overrides(
                io_data, tmp_path / "acc", *common, "train.batch_size=2", "train.gradient_accumulation_steps=2"
            )
        ).recipe(),
        quiet=True,
    )

    assert len(_loss_curve(big.output_dir)) == 3
    for x, y in zip(_loss_curve(big.output_dir), _loss_curve(acc.output_dir)):
        assert x == pytest.approx(y, rel=1e-5)


def test_bf16_autocast_and_activation_checkpointing_run(io_data, tmp_path, tiny_overrides):
    res = train(
        load_config(
            tiny_overrides(
                io_data,
                tmp_path / "o",
                "train.max_iters=2",
                "train.eval_every=2",
                "train.precision=bf16",
                "train.activation_checkpointing=true",
                "data.max_length=32",
            )
        ).recipe(),
        quiet=True,
    )
    assert res.checkpoint.name == "checkpoint_step_000002"
    assert torch.isfinite(torch.tensor(res.metrics["train_loss"])) and res.metrics["val_loss"] > 0
    import yaml

    saved = yaml.safe_load((res.checkpoint / "config.yaml").read_text())
    assert saved["model"]["gradient_checkpointing"] is True and saved["train"]["precision"] == "bf16"


def test_teacher_forced_exact_match_is_greedy_exact_match(trained, io_data):
    """Per example, the batched teacher-forced argmax check says 'match' exactly when greedy generation from the
    same prompt reproduces the reference tokens: on the model's own greedy continuations (match), on those with
    one token changed (no match), and on the real references; rows of different lengths, padded, across segment
    boundaries, several per batch."""
    from hybrid.data.encode import encode_pairs
    from hybrid.data.io_pairs import read_io_pairs
    from hybrid.training.evaluate import load, teacher_forced

    ck = load(trained.checkpoint, "cpu")
    enc = encode_pairs(ck.tokenizer, read_io_pairs(io_data["validation"]).records, ck.max_length)

    def greedy(prompt, n):
        return ck.model.generate(torch.tensor([prompt]), max_new_tokens=n)[0, len(prompt) :].tolist()

    rows, expected = [], []
    for i in range(4):
        prompt = enc.input_ids[i][: enc.prompt_lengths[i]]
        ref = enc.input_ids[i][len(prompt) :]
        own = greedy(prompt, len(ref) + 2 * i + 3)
        changed = list(own)
        changed[i % len(own)] = (changed[i % len(own)] + 1) % ck.tokenizer.vocab_size
        rows += [(prompt + own, len(prompt)), (prompt + changed, len(prompt)), (prompt + ref, len(prompt))]
        expected += [True, False, greedy(prompt, len(ref)) == ref]
    assert max(len(ids) for ids, _ in rows) > 2 * ck.model.config.segment_length  # crosses segments
    _, _, got = teacher_forced(ck.model, rows, ck.tokenizer.pad_id, batch_size=5)
    assert got == expected
    # through evaluate(): every example gets the teacher-forced verdict, with no generation at all
    metrics = evaluate(trained.checkpoint, io_data["validation"], max_generate=0)
    _, _, all_rows = teacher_forced(ck.model, list(zip(enc.input_ids, enc.prompt_lengths)), ck.tokenizer.pad_id)
    assert metrics["generated"] == 0 and metrics["exact_match"] is None
    assert metrics["teacher_forced_exact_match_count"] == sum(all_rows)
    assert metrics["teacher_forced_exact_match"] == sum(all_rows) / 8


def test_word_level_tokenizer_run(io_data, tmp_path, tiny_overrides):
    from hybrid.data.tokenizer import TextTokenizer

    res = train(
        load_config(
            tiny_overrides(io_data, tmp_path / "w", "train.tokenizer=word", "train.max_iters=2", "train.eval_every=2")
        ).recipe(),
        quiet=True,
    )
    tok = TextTokenizer.load(res.checkpoint)
    assert json.loads((res.checkpoint / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
    assert tok.vocab_size == 7 + 8  # the special tokens, <|unk|>, the 8 words of the data
    first = json.loads(Path(io_data["train"]).read_text(encoding="utf-8").splitlines()[0])
    assert len(tok.encode(first["input"])) == len(first["input"].split())
    metrics = evaluate(res.checkpoint, io_data["validation"], max_generate=1)
    assert metrics["examples"] == 8 and 0 <= metrics["teacher_forced_exact_match"] <= 1
    with pytest.raises(Exception, match="train.tokenizer"):
        load_config(tiny_overrides(io_data, tmp_path / "w", "train.tokenizer=chars"))


def test_trainer_state_is_kept_and_old_checkpoints_resume(trained, io_data, tmp_path, tiny_overrides):
    """trainer_state.json keeps its keys (in their order) and `train_seconds` grows; a checkpoint written before a key
    existed (here: without train_seconds, first_step_s, truncated) still resumes, and the run adds to its time."""
    import shutil

    state = json.loads((trained.checkpoint / ckpt_io.TRAINER_STATE).read_text())
    assert list(state) == [
        "step",
        "best_val_loss",
        "best",
        "tokens_seen",
        "train_seconds",
        "truncated",
        "first_step_s",
        "metrics",
    ]
    assert state["train_seconds"] > 0 and state["step"] == 6
    assert ckpt_io.TrainerState.from_json(state).to_json() == state
    old = tmp_path / "old"
    shutil.copytree(trained.checkpoint, old)
    legacy = {k: v for k, v in state.items() if k not in ("train_seconds", "first_step_s", "truncated")}
    (old / ckpt_io.TRAINER_STATE).write_text(json.dumps({**legacy, "a_key_of_the_future": 1}))
    res = train(
        load_config(tiny_overrides(io_data, tmp_path / "resumed", f"train.resume={old}", "train.max_iters=7")).recipe(),
        quiet=True,
    )
    resumed = ckpt_io.read_trainer_state(res.checkpoint)
    assert resumed["step"] == 7 and resumed["train_seconds"] > 0 and "a_key_of_the_future" not in resumed


def test_a_step_makes_two_collectives(io_data, tmp_path, tiny_overrides):
    """Per optimizer step the recipe calls two collectives (each one all-gather when distributed) — with a time budget
    and a log line every step, where it used to make five; validation adds its own one sum."""
    from hybrid.training import distributed
    from hybrid.training.launchers import LocalSource, Reporter
    from hybrid.training.recipe import TrainingRecipe
    from hybrid.training.train import prepare

    calls = []

    class Counting(distributed.Context):
        def gather(self, values):
            calls.append("gather")
            return super().gather(values)

        def sum(self, values):
            calls.append("sum")
            return super().sum(values)

        def max(self, values):
            calls.append("max")
            return super().max(values)

    cfg = load_config(
        tiny_overrides(
            io_data,
            tmp_path / "o",
            "train.max_iters=3",
            "train.eval_every=100",
            "train.log_every=1",
            "train.max_minutes=5",
        )
    ).recipe()
    recipe = TrainingRecipe(prepare(cfg, 0, use_ray=False, quiet=True), LocalSource(), Reporter())
    recipe.setup()
    ctx = recipe.ctx
    recipe.ctx = Counting(ctx.rank, ctx.world, ctx.local_rank, ctx.device, ctx.launcher)
    assert recipe.train()["step"] == 3
    assert calls == ["gather", "gather"] * 3 + ["sum"]


def test_compiled_training_equals_eager(io_data, tmp_path, tiny_overrides):
    """train.compile=true compiles the blocks (dynamo's graph count grows) and trains to the same losses. Traced with
    aot_eager: inductor's generated kernels take minutes to build here for every batch shape; they are compared with
    eager in tests/hybrid/models/test_model_compile.py."""
    import torch._dynamo

    common = ["train.max_iters=2", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1"]
    common += ["data.max_length=32"]
    eager = train(load_config(tiny_overrides(io_data, tmp_path / "eager", *common)).recipe(), quiet=True)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = train(
        load_config(
            tiny_overrides(
                io_data, tmp_path / "compiled", *common, "train.compile=true", "train.compile_backend=aot_eager"
            )
        ).recipe(),
        quiet=True,
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs

    assert len(_loss_curve(eager.output_dir)) == 2
    assert _loss_curve(compiled.output_dir) == pytest.approx(_loss_curve(eager.output_dir), rel=1e-5)
    assert compiled.metrics["val_loss"] == pytest.approx(eager.metrics["val_loss"], rel=1e-5)
