"""`hybrid bench code-memory` (issue 25): the scoring, the repository-memory stores, the quick run end to end, and
the committed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrid.config.model import ModelConfig
from hybrid.data.tokenizer import train_bpe
from hybrid.memory.torch_store import TorchStore
from hybrid.models.modeling import HybridForCausalLM
from hybrid.training import code_memory as cm

ROOT = Path(__file__).resolve().parents[3]
TEXTS = [
    "def total(items):\n    return sum(items)\n",
    "class Box:\n    def open(self):\n        return self.lid\n",
    "for item in items:\n    print(item.name)\n",
] * 4


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS * 3, 300)


def tiny(tok, **kw):
    cfg = dict(
        family="llama",
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        segment_length=16,
        use_internal_memory=False,
        use_external_memory=True,
        memory_slots=2,
        num_mem_heads=2,
        external_memory_size=4096,
        retrieval_k=2,
        chunk_size=4,
        retrieval_layers=[1],
        external_gate_init=0.5,
    )
    cfg.update(kw)
    torch.manual_seed(0)
    return HybridForCausalLM.for_family("llama")(ModelConfig(**cfg)).eval()


def test_scores_add_up_to_the_models_loss(tok):
    model = tiny(tok)
    records = [{"input": t, "output": TEXTS[(i + 1) % len(TEXTS)]} for i, t in enumerate(TEXTS[:5])]
    rows, far = cm.encode_examples(tok, records, 64, 16)
    scores = cm.score_rows(model, rows, far, tok.pad_id, batch_size=2)
    from hybrid.data.encode import collate

    for (ids, p), s in zip(rows, scores):
        x, labels, mask = collate([(ids, p)], tok.pad_id)
        out = model(x, labels=labels, attention_mask=mask)
        assert s.loss == pytest.approx(float(out.loss_sum.detach()), rel=1e-4) and s.tokens == out.num_tokens
    summary = cm.summarize(scores)
    assert summary["all"]["examples"] == 5 == summary["beyond"]["examples"] + summary["within"]["examples"]
    assert summary["all"]["tokens"] == sum(s.tokens for s in scores)


def test_local_rows_keep_the_output_and_move_far_positions():
    rows = [(list(range(40)), 30)]
    ((ids, p),) = cm.local_rows(rows, [[31, 35]], 8)[0]
    assert ids == list(range(22, 40)) and p == 8
    assert cm.local_rows(rows, [[31, 35]], 8)[1] == [[9, 13]]


def _chunks(store, ns):
    slab, row = store._where[ns]
    n = int(slab.next_id[row])
    return slab.keys[row, :, :n].clone(), n


def test_a_write_only_build_keeps_the_same_chunks_and_a_read_only_view_changes_nothing(tok):
    model = tiny(tok)
    reading, writing = TorchStore(model.config.chunks_capacity), TorchStore(model.config.chunks_capacity)
    cm.write_corpus(model, tok, reading, "repo", TEXTS)
    counts = cm.write_corpus(model, tok, writing, "repo", TEXTS, read=False)
    assert writing.stats()["searches"] == 0 and reading.stats()["searches"] > 0
    (a, n), (b, m) = _chunks(reading, "repo/layer1"), _chunks(writing, "repo/layer1")
    assert n == m == counts["tokens_written"] // model.config.chunk_size > 0
    assert torch.allclose(a, b, atol=1e-6)  # one retrieval layer: what it writes does not depend on what it reads

    rows, far = cm.encode_examples(tok, [{"input": "def total(items):", "output": "    return sum(items)"}], 64, 16)
    view = cm.ReadOnlyStore(writing)
    first = cm.score_rows(model, rows, far, tok.pad_id, memory_store=view, namespace="repo")
    again = cm.score_rows(model, rows, far, tok.pad_id, memory_store=view, namespace="repo")
    assert _chunks(writing, "repo/layer1")[1] == n  # scoring wrote nothing into the built memory
    assert first[0].loss == pytest.approx(again[0].loss)
    empty = cm.score_rows(model, rows, far, tok.pad_id, memory_store=cm.ReadOnlyStore(TorchStore(64)), namespace="repo")
    assert empty[0].loss != pytest.approx(first[0].loss)  # the read gate is open: the memory's content matters


def test_other_memory_comes_from_the_other_repository_and_matches_the_size(tmp_path, tok):
    from hybrid.bench.code_memory import Corpus, clip_texts, other_texts, settings_from_args
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(tmp_path / "other")
    rb.write("lib/other_module.py", "def other_function():\n    return 42\n" * 20)
    rb.write("README.md", "not source\n")
    rb.commit("other")
    import argparse

    args = argparse.Namespace(
        repos=[], seeds=None, steps=None, max_length=None, no_repo_memory=False, quick=True, variants=None, model=[]
    )
    s = settings_from_args(args)
    corpus = Corpus(splits={}, repos={"own": "unused"}, snapshot={"own": "unused"}, commits={})
    name, texts = other_texts(s, corpus, str(rb.path))
    assert name == str(rb.path) and len(texts) == 1 and texts[0].startswith("# file: lib/other_module.py")
    clipped, n = clip_texts(tok, texts * 10, 500)
    assert n <= 500 and n > 400
    with pytest.raises(Exception, match="--other-repo"):
        other_texts(s, corpus, str(tmp_path / "missing"))


def _small_history(path: Path, commits: int = 24) -> None:
    """A file of three functions, one of them changed by each commit."""
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(path)
    header = "import os\n\nLIMIT = 10\n\n\ndef helper(path):\n    return os.path.basename(path)\n\n\n"
    bodies = [1, 1, 1]
    for c in range(commits):
        bodies[c % 3] = c % 5 + 1
        funcs = "".join(
            f"def step_{j}(args):\n"
            + "".join(f"    value_{k} = helper(args[{k}])[:LIMIT]\n" for k in range(n))
            + "    return value_0\n\n\n"
            for j, n in enumerate(bodies)
        )
        rb.write("m.py", header + funcs)
        rb.commit(f"change {c}")


@pytest.mark.slow
def test_quick_run_trains_every_variant_alike_and_writes_the_json(tmp_path):
    """`hybrid bench code-memory --quick` on a registered repository: every variant the same steps, tokens and
    tokenizer; the JSON in the issue's layout; the table rendered again from it."""
    from hybrid.main import main

    _small_history(tmp_path / "src")
    data = tmp_path / "data"
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "small", f"pipeline.data_dir={data}"]) == 0
    out = tmp_path / "r.json"
    code = main(
        [
            "bench",
            "code-memory",
            "small",
            "--quick",
            "--data-dir",
            str(data),
            "--json",
            str(out),
            "--other-repo",
            str(ROOT),
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {
        "none",
        "internal",
        "external",
        "both",
        "full",
        "repo_memory",
        "other_repo_memory",
        "local_only",
    }
    for subsets in result["results"].values():
        assert set(subsets) == {"all", "beyond", "within"}
        cell = subsets["all"]["loss"]
        assert set(cell) == {"mean", "per_seed", "ci95"} and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    assert (
        set(result["n"]) >= {"all", "beyond", "within"}
        and result["n"]["all"] == result["n"]["beyond"] + result["n"]["within"] > 0
    )
    metrics = result["runs"][0]["metrics"]
    assert {m["step"] for m in metrics.values()} == {result["settings"]["steps"]}
    assert len({m["tokens_seen"] for m in metrics.values()}) == 1  # the same tokens for every variant
    assert {"seconds", "load_average", "settings"} <= set(result)
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(["bench", "code-memory", "--from-json", str(out)]) == 0


def test_the_demo_line_compares_memory_read_and_gates_closed(tmp_path, tok):
    """`memory_effect` scores the same weights twice; with the read gates open the memory changes the far-token
    loss, and `describe_effect` says both numbers and the counts in one line."""
    from hybrid.training import checkpoints as ckpt_io
    from hybrid.training.code_memory import describe_effect, memory_effect

    model = tiny(tok)
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    tok.save(ck)
    (ck / "config.yaml").write_text("data:\n  max_length: 96\n")
    (ck / "trainer_state.json").write_text("{}")
    ckpt_io.validate_checkpoint(ck)
    data = tmp_path / "test.jsonl"
    far_name = "zebra_total"
    pairs = [{"input": f"def {far_name}(items):\n" + "\n" * 40, "output": f"{far_name}(items)"}] * 3
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    effect = memory_effect(ck, data)
    assert effect["examples"] == 3 and effect["on"]["beyond"]["examples"] == 3
    assert effect["on"]["beyond"]["far_loss"] != pytest.approx(effect["off"]["beyond"]["far_loss"])
    line = describe_effect(effect)
    assert "\n" not in line and f"{effect['on']['beyond']['far_tokens']} tokens" in line and "3 test pairs" in line


def test_bad_arguments_are_one_line(tmp_path, capsys):
    from hybrid.main import main

    data = tmp_path / "data"
    assert main(["bench", "code-memory", "nosuch", "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: nosuch: not a registered repository in {data} (hybrid repos add …; registered: none)"
    )
    assert main(["bench", "code-memory", "--quick", "--max-length", "40", "--data-dir", str(data)]) == 2
    assert "--max-length: 40 leaves nothing beyond the window" in capsys.readouterr().err
    assert main(["bench", "code-memory", "--seeds", "0,0"]) == 2
    assert "--seeds: expected distinct seeds" in capsys.readouterr().err
    assert main(["bench", "code-memory", "--variants", "external,full"]) == 2
    assert "--variants: 'external,full': choose from none, internal" in capsys.readouterr().err
    assert main(["bench", "code-memory", "--model", "external_fusion"]) == 2
    assert "--model: expected KEY=VALUE" in capsys.readouterr().err
    assert not data.exists()  # nothing registered, nothing written


def test_variants_and_model_settings_reach_the_settings():
    import argparse

    from hybrid.bench.code_memory import settings_from_args

    args = argparse.Namespace(
        repos=[],
        seeds=None,
        steps=None,
        max_length=None,
        no_repo_memory=False,
        quick=False,
        variants="full,none",
        model=["external_fusion=joint", "retrieval_layers=[0, 1]"],
    )
    s = settings_from_args(args)
    assert s.variants == ["none", "full"] and not s.repo_memory  # no external model: no repository rows
    assert s.model["external_fusion"] == "joint" and s.model["retrieval_layers"] == [0, 1]


def test_committed_results_match_the_docs():
    """README.md and docs/code-memory.md carry the table of the committed results JSON, as generated."""
    from hybrid.bench import code_memory as b

    committed = (
        ("code-memory-results.json", b.DOCS),
        ("code-memory-joint.json", b.JOINT_DOCS),
        ("code-memory-gate.json", b.GATE_DOCS),
    )
    for json_name, table in committed:
        result = b._load_result(str(ROOT / "docs" / json_name))
        assert len(result["settings"]["seeds"]) >= 3 and len(result["runs"]) == len(result["settings"]["seeds"])
        assert b.doc_table(result) is table
        for name, full in table.files.items():
            assert table.block(ROOT / name) == b.markdown_report(result, full), (
                f"{name}: its {table.name} differs from docs/{json_name}; regenerate it with "
                f"`hybrid bench code-memory --from-json docs/{json_name} --write-docs`"
            )
