"""`hybrid export-hf` (issue 29): import a tiny HF base -> train a few steps -> export -> `transformers` loads the
base and gives our logits with the memory gates closed; our importer loads base + memory back; bad input is one
line and exit 2 with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid.cli.config import load_config
from hybrid.main import main
from hybrid.training.train import train
from tests.hybrid.training.hf_base_folder import make_base

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def runs(io_data, tmp_path_factory, tiny_overrides):
    """{kind: (base folder, run folder)}: a Llama (untied) and a Qwen2 (tied, q/k/v biases) base, each trained
    2 steps with both memories on (2 segments of 16 tokens per example)."""
    out = {}
    for kind, kw in (("llama", {}), ("qwen2", {"tie_word_embeddings": True})):
        root = tmp_path_factory.mktemp(f"export-{kind}")
        make_base(root / "base", kind, **kw)
        train(
            load_config(
                tiny_overrides(
                    io_data,
                    root / "run",
                    f"model.pretrained={root / 'base'}",
                    "train.max_iters=2",
                    "train.eval_every=2",
                    "data.max_length=32",
                    "train.learning_rate=3e-2",
                )
            ).recipe(),
            quiet=True,
        )
        out[kind] = (root / "base", root / "run")
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_export_hf_roundtrip(runs, tmp_path, capsys, kind):
    from hybrid.data.tokenizer import TextTokenizer
    from hybrid.models import from_pretrained, memory_gates_closed, restore_memory_gates, set_memory_gates
    from hybrid.training import checkpoints as ckpt_io

    base, run = runs[kind]
    out = tmp_path / "hf"
    if kind == "qwen2":
        out.mkdir()  # an empty folder is fine too
    assert main(["export-hf", "--checkpoint", str(run), "--output", str(out)]) == 0
    assert f"→ {out}" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "memory.safetensors",
        "memory_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    }
    ckpt = ckpt_io.resolve_checkpoint(run)
    ours = ckpt_io.load_model(ckpt).eval()
    trained_gates = [p for n, p in ours.named_parameters() if n.endswith("gate")]
    assert any(p.abs().max() > 0 for p in trained_gates)  # training moved the gates off 0: closing them matters

    cfg = json.loads((out / "config.json").read_text())
    base_cfg = json.loads((base / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"], cfg["tie_word_embeddings"]) == (
        base_cfg["model_type"],
        base_cfg["architectures"],
        base_cfg["tie_word_embeddings"],
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert (hf.lm_head.weight is hf.get_input_embeddings().weight) == (kind == "qwen2")
    ids = torch.randint(0, ours.config.vocab_size, (2, ours.config.segment_length))  # one segment
    with torch.no_grad():
        ref = hf(ids).logits
        with memory_gates_closed(ours):
            closed = ours(ids).logits
        assert (ref - closed).abs().max().item() <= 1e-5
        saved = set_memory_gates(ours, 0.9)  # the memory is there: opened, it moves the logits past the tolerance
        assert (ref - ours(ids).logits).abs().max().item() > 1e-5
        restore_memory_gates(ours, saved)
        long_ids = torch.randint(0, ours.config.vocab_size, (2, 40))  # 3 segments: memory carries across them
        back = from_pretrained(out).eval()
        assert torch.equal(back(long_ids).logits, ours(long_ids).logits)

    saved_tok = TextTokenizer.load(out)
    assert saved_tok.to_json() == TextTokenizer.load(ckpt).to_json()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "alpha beta gamma<|sep|>"
    assert hf_tok.encode(text, add_special_tokens=False) == saved_tok.encode(text)
    assert cfg["eos_token_id"] == saved_tok.eos_id == hf_tok.eos_token_id
    readme = (out / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained" in readme and "hybrid.models import from_pretrained" in readme


def test_export_hf_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    base, run = runs["llama"]
    out = tmp_path / "hf"
    for checkpoint in (tmp_path / "nowhere", base):  # missing; a folder that is not a training checkpoint
        assert main(["export-hf", "--checkpoint", str(checkpoint), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-hf", "--checkpoint", str(run), "--output", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # a disk that fills up halfway through the weights (`ulimit -f` in a real process: writes past the limit fail)
    from tests.reliability.conftest import cli, file_size_limit

    fresh = tmp_path / "fresh"
    done = cli("export-hf", "--checkpoint", str(run), "--output", str(fresh), preexec_fn=file_size_limit(4096))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no `fresh`, no temp folder left beside it
