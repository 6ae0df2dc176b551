"""Text that is not valid Unicode, and other inputs that ended in a traceback: each is one line naming the file and
line, the option or the key — a lone surrogate (a JSON `"\\ud800"` escape) in training, evaluation and generation
data, bytes that are not UTF-8 in a command-line argument, a demonstrations file or the API key, and a JSON line
nested deeper than Python's recursion limit (docs/reliability.md, "Round two: secrets, Unicode, misc")."""

from __future__ import annotations

import json
import os

from tests.reliability.conftest import assert_one_line_error, closed_port, run_main, tree

TINY = ["model=tiny_llama_hybrid", "train=tiny", "data.max_length=40", "train.max_iters=1", "train.eval_every=1"]
SURROGATE_LINE = '{"input": "caf\\ud800", "output": "beta"}\n'  # valid JSON, valid UTF-8, not valid Unicode
DEEP = 200_000


def with_line(tmp_path, base, line: str, name: str = "data.jsonl"):
    """`base`'s lines with `line` as line 3."""
    lines = base.read_text().splitlines(keepends=True)
    path = tmp_path / name
    path.write_text("".join(lines[:2]) + line + "".join(lines[2:]))
    return path


# -- a lone surrogate in data files --------------------------------------------------------------------------------
def test_lone_surrogate_in_training_data(tmp_path, tiny_checkpoint, capsys):
    _, pairs = tiny_checkpoint
    data = with_line(tmp_path, pairs, SURROGATE_LINE)
    rc, out, err = run_main(["train", *TINY, f"data.train={data}", f"train.output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line_error(rc, err, f"{data}:3", "Unicode")
    assert tree(tmp_path / "run") == {}


def test_lone_surrogate_in_eval_and_generate_data(tmp_path, tiny_checkpoint, capsys):
    ckpt, pairs = tiny_checkpoint
    data = with_line(tmp_path, pairs, SURROGATE_LINE)
    for argv in (
        ["eval", "--checkpoint", str(ckpt), "--test-data", str(data)],
        ["generate", "--checkpoint", str(ckpt), "--input-file", str(data), "--max-new-tokens", "4"],
    ):
        rc, out, err = run_main(argv, capsys)
        assert_one_line_error(rc, err, f"{data}:3", "Unicode")


# -- bytes that are not UTF-8 in arguments (Python keeps them as lone surrogates) ----------------------------------
def test_prompt_that_is_not_utf8(tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint
    prompt = os.fsdecode(b"alpha beta \xff")  # what `--prompt $'alpha beta \xff'` becomes in sys.argv
    rc, out, err = run_main(
        ["generate", "--checkpoint", str(ckpt), "--prompt", prompt, "--max-new-tokens", "4"], capsys
    )
    assert_one_line_error(rc, err, "--prompt", "UTF-8")
    assert out == ""


def test_output_dir_that_is_not_utf8_leaves_nothing(tmp_path, tiny_checkpoint, capsys):
    _, pairs = tiny_checkpoint
    out_dir = os.fsdecode(os.fsencode(tmp_path / "runs") + b"/x\xff")
    rc, out, err = run_main(["train", *TINY, f"data.train={pairs}", f"train.output_dir={out_dir}"], capsys)
    assert_one_line_error(rc, err, "train.output_dir", "UTF-8")
    assert not (tmp_path / "runs").exists()


def test_demonstrations_that_are_not_utf8(tmp_path, tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint
    for name, content in (
        ("demo.txt", b"alpha beta\ncaf\xe9 gamma\n"),
        ("demo.jsonl", b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n'),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        rc, out, err = run_main(
            ["memory", "build", "--checkpoint", str(ckpt), "--namespace", "n", "--demonstrations", str(path)], capsys
        )
        assert_one_line_error(rc, err, f"{path}:2", "UTF-8")


def test_api_key_that_is_not_ascii(tmp_path, monkeypatch, capsys):
    """An HTTP header carries ASCII only: httpx's UnicodeEncodeError was a traceback. The key is never printed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    for key in ("sk-caf\u00e9-Q7w9E2r4T6y8", os.fsdecode(b"sk-\xff-Q7w9E2r4T6y8")):
        monkeypatch.setenv("OPENAI_API_KEY", key)
        rc, out, err = run_main(["pipeline", "test-llm", "--requests", "1"], capsys)
        assert_one_line_error(rc, err, "OPENAI_API_KEY", "ASCII", out=out, secrets=(key, "Q7w9E2r4T6y8"))


# -- a JSON line nested past the recursion limit -------------------------------------------------------------------
def test_deeply_nested_json_line(tmp_path, tiny_checkpoint, capsys):
    ckpt, pairs = tiny_checkpoint
    data = with_line(tmp_path, pairs, "[" * DEEP + "]" * DEEP + "\n")
    rc, out, err = run_main(["eval", "--checkpoint", str(ckpt), "--test-data", str(data)], capsys)
    assert_one_line_error(rc, err, f"{data}:3", "nested")
    rc, out, err = run_main(["train", *TINY, f"data.train={data}", f"train.output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line_error(rc, err, f"{data}:3", "nested")
    # with data.on_bad_record=skip the line is skipped and counted, and the run finishes
    rc, out, err = run_main(
        ["train", *TINY, f"data.train={data}", "data.on_bad_record=skip", f"train.output_dir={tmp_path / 'run'}"],
        capsys,
    )
    assert rc == 0, err
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["train"]["skipped"] == {"too_deep": 1}, stats
    assert stats["train"]["examples"] == len(pairs.read_text().splitlines())
