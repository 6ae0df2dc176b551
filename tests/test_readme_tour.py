"""The README's tour lines that run in seconds, run as written — relative paths and all — from the root of a git
repository (a small sample history standing in for this checkout, so the pipeline takes seconds): sections 1
(repositories and the structural pipeline), 3 (export, train, reproduce, eval, generate) and 4 (export-hf)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.repo_builder import build_sample_repo

ROOT = Path(__file__).resolve().parent.parent
SLOW_LINES = ("model=llama_hybrid", "tensorboard")  # minutes on a CPU, or a server: not part of this test


def tour_commands(section: str) -> list[str]:
    """The commands of the first bash block under the README heading that starts with `section` (continuation
    lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n### {section}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"README.md: no bash block under ### {section}"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.slow
def test_the_tour_runs_as_written(tmp_path, monkeypatch, ray_session, capsys):
    from hybrid.main import main

    build_sample_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = tour_commands("1. ") + tour_commands("3. ") + tour_commands("4. ")
    assert any(c.startswith("hybrid repos add .") for c in commands) and any("hybrid eval" in c for c in commands)
    ran = []
    for line in commands:
        if any(s in line for s in SLOW_LINES):
            continue
        argv = shlex.split(line, comments=True)
        assert argv[0] == "hybrid", f"README.md: {line!r} is not a hybrid command"
        code = main(argv[1:])
        out = capsys.readouterr()
        assert code == 0, f"README.md: `{line}` exited {code}: {out.err.strip()[-500:]}"
        ran.append(line)
    assert len(ran) >= 10
    # what the lines wrote, where the README says, relative to where they ran
    assert (tmp_path / "data" / "repos" / "self").is_dir()
    assert (tmp_path / "datasets" / "io_pairs" / "train.jsonl").is_file()
    assert (tmp_path / "outputs" / "tiny" / "eval.json").is_file() and (tmp_path / "outputs" / "tiny-again").is_dir()
    assert (tmp_path / "outputs" / "tiny-hf" / "memory.safetensors").is_file()
