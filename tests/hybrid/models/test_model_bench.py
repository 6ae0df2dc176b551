"""`hybrid bench model` runs end to end on tiny dimensions and writes its JSON."""

from __future__ import annotations

import json

import pytest


def test_bench_model_tiny(tmp_path, capsys):
    pytest.importorskip("transformers")
    from hybrid.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "model", "--hidden-size", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1",
               "--intermediate-size", "64", "--vocab-size", "64", "--segment-length", "16", "--segments", "2",
               "--steps", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    names = [r["variant"] for r in data["rows"]]
    assert names[0].startswith("transformers") and len(names) == 6
    assert all(r["tokens_per_s"] > 0 and r["tokens_per_s_best"] >= r["tokens_per_s"] for r in data["rows"])
    assert set(data["ratios"]) == {"ours base / transformers", "internal memory only / ours base",
                                   "external memory only / ours base", "both memories (hybrid) / ours base"}
    assert "ratios (median" in capsys.readouterr().out
