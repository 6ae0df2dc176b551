"""train.init_from: a no-memory run's checkpoint starts a both-memories model — shared weights loaded, memory
parameters fresh, optimizer / scheduler / step count fresh, tokenizer taken from the checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hybrid.cli.config import load_config
from hybrid.core.errors import HybridError
from hybrid.models import build_model
from hybrid.models.modeling import is_memory_param
from hybrid.training import checkpoints as ckpt_io
from hybrid.training.train import check_init_fits, train

NO_MEMORY = ["model.use_internal_memory=false", "model.use_external_memory=false"]


@pytest.fixture(scope="module")
def base(io_data, tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("base") / "train"
    return train(
        load_config(tiny_overrides(io_data, out, *NO_MEMORY, "train.max_iters=2", "train.eval_every=2")).recipe(),
        quiet=True,
    )


def test_init_from_a_no_memory_checkpoint(base, io_data, tmp_path, tiny_overrides, capsys):
    # lr 1e-30: one real optimizer step that cannot move a float32 weight, so what was loaded stays visible
    cfg = load_config(
        tiny_overrides(
            io_data,
            tmp_path / "both",
            f"train.init_from={base.output_dir}",
            "train.max_iters=1",
            "train.eval_every=1",
            "train.learning_rate=1e-30",
            "train.warmup_iters=0",
        )
    )
    res = train(cfg.recipe())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("init from "))
    assert str(base.best_checkpoint) in line and ".internal_memory." in line and "unused" not in line
    assert res.checkpoint.name == "checkpoint_step_000001"  # a fresh step counter (the base was at step 2)
    assert ckpt_io.read_trainer_state(res.checkpoint)["step"] == 1
    assert (res.checkpoint / "tokenizer.json").read_text() == (base.best_checkpoint / "tokenizer.json").read_text()
    assert torch.load(res.checkpoint / "optimizer.pt", weights_only=True)["state"][0]["step"] == 1  # fresh AdamW

    old = load_file(base.best_checkpoint / "model.safetensors")
    new = load_file(res.checkpoint / "model.safetensors")
    torch.manual_seed(cfg.train.seed)  # what the loop builds before loading: the fresh initialisation
    fresh = build_model(cfg.model, vocab_size=new["model.embed_tokens.weight"].shape[0]).state_dict()
    memory = [k for k in new if is_memory_param(k)]
    assert memory and set(new) - set(old) == set(memory)
    for k in old:
        assert torch.equal(new[k], old[k]), k
    for k in memory:  # (a zero-initialised gate moves by ~lr = 1e-30)
        torch.testing.assert_close(new[k], fresh[k], rtol=0, atol=1e-25, msg=k)
    assert not all(torch.equal(old[k], fresh[k]) for k in old)  # loading changed something

    # and it trains: a real learning rate moves the weights, the loss is finite
    more = train(
        load_config(
            tiny_overrides(
                io_data,
                tmp_path / "trained",
                f"train.init_from={base.best_checkpoint}",
                "train.max_iters=2",
                "train.eval_every=2",
            )
        ).recipe(),
        quiet=True,
    )
    assert torch.isfinite(torch.tensor(more.metrics["train_loss"]))
    moved = load_file(more.checkpoint / "model.safetensors")
    assert any(not torch.equal(moved[k], old[k]) for k in old)


def test_init_from_checks_shapes_before_anything_is_written(base, io_data, tmp_path, tiny_overrides):
    cfg = load_config(
        tiny_overrides(io_data, tmp_path / "o", f"train.init_from={base.output_dir}", "model.intermediate_size=96")
    )
    with pytest.raises(
        HybridError,
        match=r"train\.init_from: parameter 'model\.layers\.0\.mlp\.\w+_proj\.weight' "
        r"has shape \(\d+, \d+\) in .*, but this run's model expects",
    ):
        train(cfg.recipe(), quiet=True)
    assert not (tmp_path / "o").exists()
    with pytest.raises(HybridError, match="nowhere: no such checkpoint folder"):
        train(load_config(tiny_overrides(io_data, tmp_path / "o", "train.init_from=/nowhere")).recipe(), quiet=True)
    # the other way round: a memory model's checkpoint into a no-memory model lists what it does not use
    cfg = load_config(tiny_overrides(io_data, tmp_path / "o", *NO_MEMORY))
    both = load_config(tiny_overrides(io_data, tmp_path / "o"))
    ck = tmp_path / "ck"
    build_model(both.model, vocab_size=300).save_pretrained(ck)
    line = check_init_fits(ck, cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": 300})}))
    assert "fresh (not in the checkpoint): none; unused (not in this model): " in line and ".internal_memory." in line
