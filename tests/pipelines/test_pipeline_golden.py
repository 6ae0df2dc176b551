"""The outputs of generate-ast, generate-ast-diffs and generate-fim stay byte for byte what they were.

golden_outputs.json holds the sha256 of every output file (stats.json aside: it has times; license.json too: it
is the repository's licence, written since issue 27, not a stage's output — checked on its own) for two fixed
histories built here — tests/repo_builder.py's sample (eight languages, renames, merges, binaries, a broken file)
and a 150-commit synthetic Rust crate — as written by the pipeline at main cc5b563, before the partial-parse and
speed work of issue 15. Speed-ups must not change a byte. When a format change is intended, regenerate it with
`UPDATE_GOLDEN=1 python -m pytest tests/pipelines/test_pipeline_golden.py` and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hybrid.cli.config import load_config
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from pipelines.synthetic import build_synthetic_rust_repo
from tests.repo_builder import build_sample_repo

GOLDEN = Path(__file__).with_name("golden_outputs.json")


def _digests(root: Path) -> dict[str, str]:
    build_sample_repo(root / "sample")
    build_synthetic_rust_repo(root / "syn", 150, seed=0)
    cfg = load_config([f"pipeline.data_dir={root / 'data'}"])
    add_repo(str(root / "sample"), "sample", cfg.pipeline)
    add_repo(str(root / "syn"), "syn", cfg.pipeline)
    run_pipeline(
        ["sample", "syn"],
        cfg.pipeline,
        cfg.llm,
        local=True,
        progress=False,
        stages=["generate-ast", "generate-ast-diffs", "generate-fim"],
    )
    out = root / "data" / "ast_dataset"
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("stats.json", "license.json")
    }


def test_outputs_are_byte_identical_to_the_reference(tmp_path):
    got = _digests(tmp_path)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want), "other output files than the reference"
    changed = [name for name in want if got[name] != want[name]]
    licenses = sorted((tmp_path / "data" / "ast_dataset").glob("*/license.json"))
    assert [json.loads(p.read_text())["status"] for p in licenses] == ["none", "none"]  # no licence file in either
    assert not changed, f"{len(changed)} output files changed, e.g. {changed[:5]}"
