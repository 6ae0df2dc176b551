"""Long-file change tasks and the beyond / within split of `hybrid bench code-memory` (hybrid/data/code_tasks.py)."""

from __future__ import annotations

import pytest

from hybrid.data.code_tasks import CodeExample, far_tokens, time_split
from hybrid.data.tokenizer import train_bpe

S = 16  # the window of these tests, in tokens


@pytest.fixture(scope="module")
def tok():
    corpus = [
        "def zebra_total(items):\n    return sum(items)\n",
        "x = 1\n" * 50,
        "value = compute(value)\n" * 20,
        "print('hello world')\n" * 10,
    ]
    return train_bpe(corpus * 5, 400)


def _ids(tok, *pieces: str) -> list[list[int]]:
    return [tok.encode(p) for p in pieces]


def _sequence(tok, before: str, filler_tokens: int, window_part: str, output: str):
    """ids = before + filler (so many newline tokens) + window_part + <|sep|> + output + <|endoftext|>, and the
    prompt length."""
    (newline,) = tok.encode("\n")
    head = tok.encode(before)
    fill = [newline] * filler_tokens
    win = tok.encode(window_part)
    prompt = head + fill + win + [tok.sep_id]
    return prompt + tok.encode(output) + [tok.eos_id], len(prompt)


def _pad_to_boundary(tok, before_len: int, window_len: int, out_offset: int) -> int:
    """Filler tokens so that the output's first token sits `out_offset` tokens into a window."""
    used = before_len + window_len + 1  # + separator
    target = S * (used // S + 2) + out_offset
    return target - used


def test_a_name_only_before_the_window_is_far(tok):
    before = "def zebra_total(items):\n"
    output = "zebra_total(items)\n"
    fill = _pad_to_boundary(tok, len(tok.encode(before)), 0, 2)
    ids, p = _sequence(tok, before, fill, "", output)
    fa = far_tokens(tok, ids, p, S)
    assert fa.beyond and "zebra_total" in fa.names and "items" in fa.names
    first_name = tok.encode("zebra_total")
    assert fa.far[0] == p  # the name starts the output
    assert len([i for i in fa.far if i < p + len(first_name)]) == len(first_name)  # every token of the name is far


@pytest.mark.parametrize("outside, far", [(0, False), (1, False), (2, True), (6, True)])
def test_a_name_just_inside_the_window_is_within_and_just_outside_is_far(tok, outside, far):
    """The earlier occurrence `def zebra_total(items):` ends right before the separator; its first `outside` tokens
    fall before the output's window. `def` out: still within; the name's first token out: far."""
    output = "zebra_total(items)\n"
    window = "def zebra_total(items):\n"
    n = len(tok.encode(window))
    assert tok.decode(tok.encode(window)[:1]) == "def" and tok.decode(tok.encode(window)[1:2]).strip().startswith(
        "zebra"
    )
    fill = _pad_to_boundary(tok, 0, n, n + 1 - outside)
    ids, p = _sequence(tok, "", fill, window, output)
    assert p - p % S == (p - 1 - n) + outside  # the window starts `outside` tokens into the earlier occurrence
    fa = far_tokens(tok, ids, p, S)
    assert fa.beyond == far
    assert ("zebra_total" in fa.names) == far


def test_names_not_seen_before_and_names_the_output_repeats_are_not_far(tok):
    before = "def zebra_total(items):\n"
    fill = _pad_to_boundary(tok, len(tok.encode(before)), 0, 1)
    ids, p = _sequence(tok, before, fill, "", "print('hello world')\n")
    assert far_tokens(tok, ids, p, S).far == []  # nothing the output says stands earlier
    # a far name the output repeats in the same window: only the first occurrence is far
    ids, p = _sequence(tok, before, fill, "", "zebra_total zebra_total\n")
    fa = far_tokens(tok, ids, p, S)
    assert fa.names == ["zebra_total"]


def test_keywords_are_not_names(tok):
    before = "def zebra_total(items):\n    return sum(items)\n"
    fill = _pad_to_boundary(tok, len(tok.encode(before)), 0, 1)
    ids, p = _sequence(tok, before, fill, "", "    return 1\n")
    assert far_tokens(tok, ids, p, S).names == []


def test_time_split_keeps_commits_whole_and_in_order():
    ex = [CodeExample("i", "o", "r", c, "f.py", f"f{c}_{k}") for c in range(10) for k in range(c % 3 + 1)]
    parts = time_split(ex, validation=0.2, test=0.2)
    assert sum(len(v) for v in parts.values()) == len(ex)
    commits = {k: {e.commit_number for e in v} for k, v in parts.items()}
    assert max(commits["train"]) < min(commits["validation"]) <= max(commits["validation"]) < min(commits["test"])
    assert not (commits["train"] & commits["test"])


def test_long_file_examples_come_from_the_file_before_the_declaration(tmp_path):
    from hybrid.cli.config import load_config
    from hybrid.data.code_tasks import long_file_examples
    from pipelines.repos import add_repo
    from pipelines.run import run_pipeline
    from tests.repo_builder import RepoBuilder

    rb = RepoBuilder(tmp_path / "src")
    header = "import os\n\nLIMIT = 10\n\n\ndef helper(path):\n    return os.path.basename(path)\n\n\n"
    rb.write("m.py", header + "def main(args):\n    return helper(args[0])\n")
    rb.commit("add main")
    rb.write("m.py", header + "def main(args):\n    name = helper(args[0])\n    return name[:LIMIT]\n")
    rb.commit("limit the name")
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}"])
    add_repo(str(rb.path), "m", cfg.pipeline)
    run_pipeline(
        ["m"], cfg.pipeline, cfg.llm, stages=["generate-ast", "generate-ast-diffs"], local=True, progress=False
    )
    examples = list(long_file_examples(tmp_path / "data", "m", tmp_path / "data" / "repos" / "m"))
    changed = [e for e in examples if e.commit_number == 1]
    assert [e.function_id for e in changed] == ["m.py::function::main"]
    (e,) = changed
    assert e.input == header + "def main(args):\n"
    assert e.output == "    name = helper(args[0])\n    return name[:LIMIT]"  # the declaration ends at its last byte
