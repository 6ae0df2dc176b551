"""The export of issue 27 on a real pipeline's outputs: tests/repo_builder.py's sample history (eight languages)
through the structural stages in this process, then `hybrid pipeline export` as JSONL and as Parquet; `datasets`
loads the Parquet folder and it is the JSONL export record for record; the card has the languages and dates."""

from __future__ import annotations

import json

from hybrid.core.io import read_jsonl
from hybrid.main import main
from tests.repo_builder import build_sample_repo

SPLITS = ("train", "validation", "test")


def test_sample_history_exports_as_parquet_and_jsonl(tmp_path, monkeypatch, capsys):
    from datasets import load_dataset

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    build_sample_repo(tmp_path / "src")
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "s", f"pipeline.data_dir={data}"]) == 0
    stages = "generate-ast,generate-ast-diffs,generate-fim"
    assert (
        main(["pipeline", "run", "s", "--local", "--no-progress", "--stages", stages, f"pipeline.data_dir={data}"]) == 0
    )
    (data / "ast_dataset" / "s" / "license.json").write_text(
        json.dumps({"spdx": "MIT OR Apache-2.0", "file": "LICENSE-MIT", "status": "detected", "commit": "0" * 40})
    )
    capsys.readouterr()
    common = ["pipeline", "export", f"pipeline.data_dir={data}", "--validation-fraction", "0.2"]
    assert main([*common, "--output-dir", str(tmp_path / "jsonl")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "pq"), "--format", "parquet"]) == 0
    assert "warning" not in capsys.readouterr().err  # a detected, allowed licence: nothing to warn about

    jsonl = {s: read_jsonl(tmp_path / "jsonl" / f"{s}.jsonl") for s in SPLITS}
    assert all(jsonl.values()) and all(r["license"] == "MIT OR Apache-2.0" for s in SPLITS for r in jsonl[s])
    ds = load_dataset("parquet", data_dir=str(tmp_path / "pq"))
    for split in SPLITS:
        assert [dict(r) for r in ds[split]] == jsonl[split], split
    card = (tmp_path / "pq" / "README.md").read_text()
    stats = json.loads((tmp_path / "jsonl" / "stats.json").read_text())
    assert f"| train | {stats['sizes']['train']} |" in card and "| `MIT OR Apache-2.0` | s |" in card
    for language in ("python", "rust", "go", "java"):
        assert f"| {language} | " in card, language
    assert "From 20" in card and "From unknown" not in card  # the commits' dates
    assert "hybrid pipeline export pipeline.data_dir=" in card and "--validation-fraction 0.2" in card
