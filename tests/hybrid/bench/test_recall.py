"""`hybrid bench recall`: the task generators and a smoke run of the whole benchmark (no accuracy target here:
that is the benchmark's job; see docs/recall.md)."""

from __future__ import annotations

import json

import pytest

from hybrid.bench import recall_tasks as rt
from hybrid.main import main

L = 32


@pytest.mark.parametrize("task", rt.TASKS + rt.TRAINING_AIDS)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_examples_fill_exactly_n_segments(task, n):
    for layout, length in ((rt.Layout(), L), (rt.Layout(prefix=1, suffix=2), 40)):
        for ex in rt.generate(task, n, 50, length, seed=3, layout=layout):
            assert rt.n_tokens(ex) + layout.prefix + layout.suffix == n * length
            assert ex.output and set((ex.input + " " + ex.output).split()) <= set(rt.vocabulary())


def test_generation_is_seeded_and_splits_differ():
    a = [e.record() for e in rt.generate("kv", 4, 20, L, seed=1)]
    b = [e.record() for e in rt.generate("kv", 4, 20, L, seed=1)]
    c = [e.record() for e in rt.generate("kv", 4, 20, L, seed=1, split="test")]
    assert a == b and a != c


def _segment_of(words: list[str], index: int) -> int:
    return index // L


@pytest.mark.parametrize("n", [4, 16])
def test_answer_lies_outside_the_last_segment(n):
    """For n > 1 the evidence sits in segments 0..n-2: the question's window (the last segment) lacks it."""
    for ex in rt.generate("kv", n, 50, L, seed=0):
        words = ex.input.split()
        key = words[-1]
        pos = words.index(key)  # the pair (key first occurrence) precedes the question
        assert words[pos + 1] == ex.output and _segment_of(words, pos) == _segment_of(words, pos + 1) < n - 1
        assert ex.output not in words[(n - 1) * L:]
    for ex in rt.generate("passkey", n, 50, L, seed=0):
        words = ex.input.split()
        digits = ex.output.split()
        last = " ".join(words[(n - 1) * L:])
        assert " ".join(digits) not in last
    for ex in rt.generate("facts", n, 50, L, seed=0):
        words = ex.input.split()
        assert ex.output not in words[(n - 1) * L:]
        assert ex.output in words[: (n - 1) * L]


def test_chain_aid_follows_its_links():
    for separator in (1.0, 0.0):
        for ex in rt.generate("chain", 4, 30, L, seed=2, separator=separator):
            words = ex.input.split()
            current = words[-1]
            for nxt in ex.output.split():
                links = {(a, b) for a, b in zip(words[:-2], words[1:-2])}
                assert (current, nxt) in links  # each output token follows the previous one in some link
                current = nxt
            assert ("," in words) == (separator == 1.0)


def test_chance_levels():
    assert rt.CHANCE == {"kv": 1 / 16, "passkey": 1e-5, "facts": 1 / 8}


def test_too_small_segment_is_a_clear_error():
    from hybrid.core.errors import HybridError

    with pytest.raises(HybridError, match="segment_length 8 too small"):
        list(rt.generate("facts", 1, 1, 8, seed=0))


def test_quick_run_writes_table_json_and_plot(tmp_path, capsys):
    out, plot, md = tmp_path / "recall.json", tmp_path / "recall.png", tmp_path / "recall.md"
    rc = main(["bench", "recall", "--quick", "--steps", "6", "--eval-examples", "4", "--json", str(out),
               "--markdown", str(md),
               "--plot", str(plot), "--base-steps", "6", "bench.batch_size=4"])
    assert rc == 0
    result = json.loads(out.read_text())
    variants = ["none", "internal", "external", "both"]
    assert list(result["accuracy"]) == variants
    for v in variants:
        assert list(result["accuracy"][v]) == ["kv", "passkey", "facts"]
        for task in result["accuracy"][v].values():
            assert list(task) == ["1", "4"]
            assert all(0.0 <= a <= 1.0 for a in task.values())
    assert result["settings"]["seed"] == 0 and result["chance"]["kv"] == pytest.approx(1 / 16)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(md.read_text().splitlines()) == 2 + 3 * 2  # header, rule, one row per task and length
    printed = capsys.readouterr().out
    assert "exact match" in printed and "external only" in printed and "two-hop facts" in printed


def test_bad_variant_is_a_one_line_error(capsys):
    assert main(["bench", "recall", "--quick", "--variants", "none,bogus"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err


def test_training_template_gives_exactly_n_segments_of_tokens():
    """The bench trains through `hybrid train`: its word-level tokenizer and IO-pair template (input <|sep|> output
    <|endoftext|>) must make every example exactly n * segment_length tokens, so length buckets hold one length
    and no fact straddles a segment."""
    from hybrid.bench import recall as r
    from hybrid.data.encode import encode_pairs
    from hybrid.data.tokenizer import train_word_level

    records = [e.record() for t in rt.TASKS + rt.TRAINING_AIDS for n in (1, 2, 4, 16)
               for e in rt.generate(t, n, 10, L, 0, "train", r._layout())]
    tok = train_word_level(w for rec in records for w in (rec["input"], rec["output"]))
    enc = encode_pairs(tok, records, 16 * L)
    assert [len(ids) for ids in enc.input_ids] == [rec["segments"] * L for rec in records]
    for rec in records:  # key echo: the value is predicted at the key, not at <|sep|> (docs/recall.md)
        if rec["task"] in ("kv", "chain"):
            assert rec["output"].split()[0] == rec["input"].split()[-1]


def test_gated_init_opens_the_internal_gate(tmp_path):
    """Stage 2 starts from a copy of the base with the internal read gate written in at tanh = 0.5."""
    import math

    from safetensors.torch import load_file

    from hybrid.bench import recall as r
    from hybrid.cli.config import load_config
    from hybrid.training.train import train

    s = r.Settings(base_steps=2, steps=2, batch_size=2, lengths=[1], eval_examples=2)
    data = tmp_path / "base.jsonl"
    examples = r.training_examples(s, 2, {1: 1.0}, 0)
    r.write_jsonl(data, [e.record() for e in examples] + r.vocabulary_records(examples, L, 0))
    base = train(load_config(r.train_overrides(s, "none", tmp_path / "base", data, 2, 0)).recipe(), quiet=True).checkpoint
    init = r.gated_init(s, "both", base, tmp_path / "init")
    weights = load_file(str(next(init.glob("*.safetensors"))))
    gates = {k: v for k, v in weights.items() if k.endswith(".internal_memory.gate")}
    assert gates and all(math.tanh(v.flatten()[0].item()) == pytest.approx(0.5) for v in gates.values())
    assert not any(k.endswith(".self_attn.memory_gate") for k in weights)  # external gate: fresh (0)
    assert r.gated_init(s, "none", base, tmp_path / "init_none") == base  # no memory: nothing to open
