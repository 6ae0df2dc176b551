"""Bad input: each kind fails with exit code 2 and one line naming the problem, writes nothing half-done and loses
nothing (docs/reliability.md, "bad input")."""

from __future__ import annotations

import json
import time

import pytest

from tests.reliability.conftest import SECRET, assert_one_line_error, cli, run_main
from tests.repo_builder import build_sample_repo

# -- numeric options: every one is checked when parsed ---------------------------------------------------------
NUMERIC = [
    (["eval", "--checkpoint", "x", "--test-data", "y", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "x", "--test-data", "y", "--batch-size", "-3"], "--batch-size"),
    (["eval", "--checkpoint", "x", "--test-data", "y", "--max-generate", "-2"], "--max-generate"),
    (["generate", "--checkpoint", "x", "--prompt", "p", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["pipeline", "test-llm", "--requests", "0"], "--requests"),
    (
        ["memory", "build", "--checkpoint", "x", "--namespace", "n", "--repo", ".", "--batch-segments", "0"],
        "--batch-segments",
    ),
    (["pipeline", "export", "--validation-fraction", "1.5"], "--validation-fraction"),
    (["demo", "--minutes", "-1"], "--minutes"),
    (["bench", "train", "--steps", "0"], "--steps"),
    (["bench", "llm", "--p429", "nan"], "--p429"),
]


@pytest.mark.parametrize("argv,option", NUMERIC, ids=[" ".join(a[:2]) + " " + o for a, o in NUMERIC])
def test_numeric_options_are_validated(argv, option, capsys):
    rc, out, err = run_main(argv, capsys)
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert option in last and "expected" in last, last


# -- config ------------------------------------------------------------------------------------------------------
def test_non_utf8_config_file(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_bytes(b"train:\n  batch_size: 4  # caf\xe9\n")
    rc, out, err = run_main(["train", "--config", str(bad)], capsys)
    assert_one_line_error(rc, err, str(bad), "not UTF-8")


def test_unknown_config_key(capsys):
    rc, out, err = run_main(["train", "train.bogus=1"], capsys)
    assert_one_line_error(rc, err, "train.bogus")


def test_wrongly_typed_config_value(capsys):
    rc, out, err = run_main(["train", "train.batch_size=many"], capsys)
    assert_one_line_error(rc, err, "train.batch_size")


# -- input files -------------------------------------------------------------------------------------------------
def test_non_utf8_training_data(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    rc, out, err = run_main(
        [
            "train",
            "model=tiny_llama_hybrid",
            "train=tiny",
            f"data.train={data}",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert_one_line_error(rc, err, f"{data}:2", "UTF-8")
    assert not list((tmp_path / "run").glob("checkpoint_step_*"))


def test_non_utf8_generate_input_file(tmp_path, tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint
    inputs = tmp_path / "inputs.txt"
    inputs.write_bytes(b"alpha beta\ncaf\xe9 gamma\n")
    rc, out, err = run_main(["generate", "--checkpoint", str(ckpt), "--input-file", str(inputs)], capsys)
    assert_one_line_error(rc, err, f"{inputs}:2", "UTF-8")


def test_generate_budget_longer_than_the_model_reads(tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint  # data.max_length=40
    rc, out, err = run_main(
        ["generate", "--checkpoint", str(ckpt), "--prompt", "alpha beta", "--max-new-tokens", "40"], capsys
    )
    assert_one_line_error(rc, err, "max_new_tokens=40", "40 tokens")
    assert out == ""


def test_eval_of_empty_data_is_not_a_perfect_score(tmp_path, tiny_checkpoint, capsys):
    ckpt, _ = tiny_checkpoint
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, out, err = run_main(["eval", "--checkpoint", str(ckpt), "--test-data", str(empty)], capsys)
    assert_one_line_error(rc, err, str(empty))
    assert "perplexity" not in out


def test_ten_megabyte_input_line_is_clipped_before_tokenizing(tiny_checkpoint):
    """The ids equal tokenizing everything and cutting; a 10 MB line costs milliseconds, not gigabytes."""
    from hybrid.data.encode import encode_record, fit_to_length
    from hybrid.data.tokenizer import TextTokenizer

    ckpt, _ = tiny_checkpoint
    tok = TextTokenizer.load(ckpt)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    medium = {"input": " ".join(words[i % 8] for i in range(20_000)), "output": "beta alpha"}
    whole = fit_to_length(tok.encode(medium["input"]), tok.encode(medium["output"]), tok.sep_id, tok.eos_id, 40)
    assert encode_record(tok, medium, 40) == whole
    huge = {"input": "alpha " * 1_700_000, "output": "beta"}  # ~10 MB
    t0 = time.process_time()  # this process's CPU (every thread's): what tokenizing 10 MB would cost, unlike wall
    ids, prompt_len, truncated = encode_record(tok, huge, 40)  # time, which a busy machine stretches
    assert time.process_time() - t0 < 1.0
    assert len(ids) <= 40 and truncated == "input_truncated_left"


# -- the repository registry -------------------------------------------------------------------------------------
@pytest.fixture()
def registry(tmp_path):
    src = tmp_path / "src"
    build_sample_repo(src)
    data = tmp_path / "data"
    rc = run_main_quiet(["repos", "add", str(src), "--name", "sample", f"pipeline.data_dir={data}"])
    assert rc == 0
    return data


def run_main_quiet(argv):
    from hybrid.main import main

    return main(argv)


def test_hand_edited_registry_name_is_refused_wherever_read(tmp_path, registry, capsys):
    reg = registry / "repos" / "registry.json"
    entries = json.loads(reg.read_text())
    entries[0]["name"] = "../../../escaped"
    reg.write_text(json.dumps(entries))
    capsys.readouterr()
    for argv in (
        ["repos", "list"],
        ["pipeline", "run", "--local", "--stages", "generate-ast"],
        ["pipeline", "generate-ast", "--local", "../../../escaped"],
    ):
        rc, out, err = run_main([*argv, f"pipeline.data_dir={registry}"], capsys)
        assert_one_line_error(rc, err, "../../../escaped")
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not (registry / "ast_dataset").exists()


def test_registry_that_is_not_json(registry, capsys):
    reg = registry / "repos" / "registry.json"
    reg.write_text("[{oops")
    rc, out, err = run_main(["repos", "list", f"pipeline.data_dir={registry}"], capsys)
    assert_one_line_error(rc, err, str(reg), "not a valid registry")
    assert reg.read_text() == "[{oops"  # left for the user to fix, not overwritten


def test_diff_ast_record_missing_fields(registry, capsys):
    rc, out, err = run_main(
        ["pipeline", "run", "--local", "--stages", "generate-ast,generate-ast-diffs", f"pipeline.data_dir={registry}"],
        capsys,
    )
    assert rc == 0, err
    diffs = sorted(
        (registry / "ast_dataset" / "sample").glob("commit_*/diff_ast.jsonl"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    target = next(p for p in diffs if p.read_text().strip())
    lines = target.read_text().splitlines()
    record = json.loads(lines[0])
    del record["status"]
    lines[0] = json.dumps(record)
    target.write_text("\n".join(lines) + "\n")
    rc, out, err = run_main(["pipeline", "generate-fim", "--local", f"pipeline.data_dir={registry}"], capsys)
    assert_one_line_error(rc, err, f"{target}:1", "status")
    assert not (target.parent / "fim_dataset.json").exists()  # the broken commit is not marked done


def test_deleted_ast_jsonl_is_redone(registry, capsys):
    argv = ["pipeline", "generate-ast", "--local", f"pipeline.data_dir={registry}"]
    assert run_main(argv, capsys)[0] == 0
    victim = registry / "ast_dataset" / "sample" / "commit_3" / "ast.jsonl"
    before = victim.read_bytes()
    victim.unlink()
    assert run_main(argv, capsys)[0] == 0
    assert victim.read_bytes() == before


def test_temp_files_of_a_killed_run_are_removed_when_the_commit_is_redone(registry, capsys):
    """A run killed between write and rename leaves `.NAME.<pid>-<token>-<n>.tmp`; the run that redoes the commit
    removes it (and leaves other files alone)."""
    argv = [
        "pipeline",
        "run",
        "--local",
        "--stages",
        "generate-ast,generate-ast-diffs",
        f"pipeline.data_dir={registry}",
    ]
    assert run_main(argv, capsys)[0] == 0
    folder = registry / "ast_dataset" / "sample" / "commit_3"
    before = (folder / "diff_ast.jsonl").read_bytes()
    (folder / "diff_ast.jsonl").unlink()
    stale = folder / ".diff_ast.jsonl.4471-7e2c43fa-29.tmp"
    stale.write_text('{"half": ')
    other = folder / ".task.json.99-abcdef01-0.tmp"  # not a file this stage writes
    other.write_text("{")
    untouched = registry / "ast_dataset" / "sample" / "commit_2" / ".diff_ast.jsonl.1-abcdef01-0.tmp"
    untouched.write_text("{")  # a finished commit is not visited
    assert run_main(argv, capsys)[0] == 0
    assert (folder / "diff_ast.jsonl").read_bytes() == before
    assert not stale.exists() and other.exists() and untouched.exists()


# -- the LLM endpoint --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:port/v1", "ftp://127.0.0.1/v1"])
def test_llm_base_url_that_is_not_a_url(url):
    r = cli("pipeline", "test-llm", env={"LLM_BASE_URL": url, "OPENAI_API_KEY": SECRET}, timeout=60)
    assert_one_line_error(r.returncode, r.stderr, "LLM_BASE_URL", out=r.stdout)


@pytest.mark.parametrize("validation,test", [("0.6", "0.6"), ("0.5", "0.5")])
def test_export_fractions_that_leave_nothing_to_train(registry, tmp_path, validation, test, capsys):
    """Each fraction was checked alone, so 0.6 + 0.6 was accepted (and validation got 0 records). The training
    split's share is what is left, 1 - validation - test: it must be more than 0."""
    rc, out, err = run_main(
        [
            "pipeline",
            "run",
            "--local",
            "--no-progress",
            "--stages",
            "generate-ast,generate-ast-diffs,generate-fim",
            f"pipeline.data_dir={registry}",
        ],
        capsys,
    )
    assert rc == 0, err
    dest = tmp_path / "io_pairs"
    rc, out, err = run_main(
        [
            "pipeline",
            "export",
            "--validation-fraction",
            validation,
            "--test-fraction",
            test,
            "--output-dir",
            str(dest),
            f"pipeline.data_dir={registry}",
        ],
        capsys,
    )
    assert_one_line_error(rc, err, f"--validation-fraction {validation}", f"--test-fraction {test}")
    assert not dest.exists()
