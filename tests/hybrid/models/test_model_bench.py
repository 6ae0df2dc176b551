"""`hybrid bench model` runs end to end on tiny dimensions and writes its JSON."""

from __future__ import annotations

import json

import pytest


def test_bench_model_tiny(tmp_path, capsys):
    pytest.importorskip("transformers")
    from hybrid.main import main

    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "model",
            "--hidden-size",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--intermediate-size",
            "64",
            "--vocab-size",
            "64",
            "--segment-length",
            "16",
            "--segments",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows)[0].startswith("transformers") and len(rows) == 6
    # every variant ran the tokens it was given: a batch of 1 segment of 16 for the anchors, of 2 for the memory
    # variants, at the rate its timings give
    batch = data["args"]["batch_size"]
    for name, r in rows.items():
        assert r["tokens"] == batch * (16 if "1 segment" in name else 32), name
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds_median"])
        assert r["tokens_per_cpu_s"] == pytest.approx(r["tokens"] / r["cpu_seconds_median"])
    # the ratios are those of the rows they name
    assert data["ratios"]["ours base / transformers"] == pytest.approx(
        rows["ours: base, 1 segment"]["tokens_per_s"] / rows["transformers LlamaForCausalLM, 1 segment"]["tokens_per_s"]
    )
    assert data["ratios"]["both memories (hybrid) / ours base"] == pytest.approx(
        rows["ours: both memories (hybrid), 2 segments"]["tokens_per_s"]
        / rows["ours: base (no memory), 2 segments"]["tokens_per_s"]
    )
    assert set(data["ratios"]) == {
        "ours base / transformers",
        "internal memory only / ours base",
        "external memory only / ours base",
        "both memories (hybrid) / ours base",
    }
    assert set(data["ratios_cpu"]) == set(data["ratios"])
    assert data["ratios_cpu"]["ours base / transformers"] == pytest.approx(
        rows["ours: base, 1 segment"]["tokens_per_cpu_s"]
        / rows["transformers LlamaForCausalLM, 1 segment"]["tokens_per_cpu_s"]
    )
    printed = capsys.readouterr().out
    assert "ratios (median" in printed
    # the load average is printed (and kept) so a reader can judge how busy the machine was
    assert "load average" in printed and set(data["load_average"]) == {"before", "after"}


def test_bench_model_compile_needs_a_warmup_step(capsys):
    from hybrid.main import main

    assert main(["bench", "model", "--compile", "--warmup", "0", "--no-transformers", "--device", "cpu"]) != 0
    assert "--compile needs --warmup 1 or more" in capsys.readouterr().err
