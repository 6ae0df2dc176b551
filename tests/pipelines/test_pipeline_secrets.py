"""Secrets and e-mail addresses are replaced by placeholders before any text is written or sent to the LLM
(pipelines/secrets.py): the scrubber on strings, and the whole pipeline (structural stages, generate-tasks and
generate-reasoning against a real chat-completions server on 127.0.0.1, generate-fim, export) over a real git
history with secrets planted in code, in commit messages and in diffs."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from hybrid.bench.chat_server import ChatServer
from hybrid.cli.config import load_config
from hybrid.main import main
from pipelines.repos import add_repo
from pipelines.run import run_pipeline
from pipelines.secrets import Scrubber
from tests.repo_builder import RepoBuilder

# Planted secrets, one of each kind (all made up; the AWS key is AWS's documented example id)
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_R4nd0mT0k3nV4lu3Xq9Wm2Lp7Zs5Kd8Jh3Nb"
PEM_BODY = "MIIEowIBAAKCAQEAv9Xq2Lm5Np8Rs3Tu6Vw9Yz1Ab4Cd7Ef0Gh3Ij6Kl9Mn2Op5Qr"
PRIVATE_KEY = (
    f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nQ3zW8xY1vB4nM7kL0pO9iU2yT5rE6wQ3aS4dF7gH0jK=\n"
    "-----END RSA PRIVATE KEY-----"
)
URL_PASSWORD = "Pg5ecretPassw0rd"
KEYWORD_SECRET = "Tr0ub4dor&3-horse"
HIGH_ENTROPY = "kZ9vQ2mL7xW4pR8tY1uB6nC3aD5fG0hJqLs"
EMAIL = "jane.doe@corp-example.com"
MESSAGE_EMAIL = "ops.lead@corp-example.org"
MESSAGE_URL_PASSWORD = "m3ssag3Pa55word"
PLANTED = [
    AWS_KEY,
    GITHUB_TOKEN,
    PEM_BODY,
    URL_PASSWORD,
    KEYWORD_SECRET,
    HIGH_ENTROPY,
    EMAIL,
    MESSAGE_EMAIL,
    MESSAGE_URL_PASSWORD,
]


@pytest.fixture(scope="module")
def scrubber():
    return Scrubber()


@pytest.mark.parametrize(
    ("line", "kind", "secret"),
    [
        (f'AWS = "{AWS_KEY}"\n', "aws_key", AWS_KEY),
        (f'token = "{GITHUB_TOKEN}"\n', "github_token", GITHUB_TOKEN),
        (f'db = "postgres://app:{URL_PASSWORD}@db.internal:5432/app"\n', "url_password", URL_PASSWORD),
        (f'password = "{KEYWORD_SECRET}"\n', "keyword_secret", KEYWORD_SECRET),
        (f'SIGNING = "{HIGH_ENTROPY}"\n', "high_entropy", HIGH_ENTROPY),
        (f"# maintainer: {EMAIL}\n", "email", EMAIL),
    ],
)
def test_each_kind_is_replaced_by_its_placeholder(scrubber, line, kind, secret):
    out, counts = scrubber.scrub(line)
    assert secret not in out
    assert ("<EMAIL>" if kind == "email" else f"<SECRET:{kind}>") in out
    assert counts == Counter({kind: 1})
    assert scrubber.scrub(out) == (out, Counter())  # a placeholder is not found again


def test_a_private_key_block_goes_whole_and_keeps_its_lines(scrubber):
    code = f'PEM = """{PRIVATE_KEY}"""\nx = 1\n'
    out, counts = scrubber.scrub(code)
    assert counts == Counter({"private_key": 1})
    assert out == 'PEM = """<SECRET:private_key>\n\n\n"""\nx = 1\n'
    assert out.count("\n") == code.count("\n")  # line numbers of what follows stay true
    diff = "".join(f"+{ln}\n" for ln in code.splitlines())  # in a diff, the +/- markers stay
    out, _ = scrubber.scrub(diff)
    assert out == '+PEM = """<SECRET:private_key>\n+\n+\n+"""\n+x = 1\n'


def test_ordinary_code_is_left_alone(scrubber):
    code = (
        "@property\n"
        "def key(self):\n"
        '    sha = "3e00fb8a1b2c3d4e5f60718293a4b5c6d7e8f901"  # a git hash is no secret\n'
        "    password = get_password()\n"
        '    secret = "${SECRET}"\n'
        '    remote = "git@github.com:org/repo.git"\n'
        '    return "https://example.com/a/b?q=1"\n'
    )
    assert scrubber.scrub(code) == (code, Counter())


def _history(path):
    rb = RepoBuilder(path)
    rb.write("app.py", "def greet(name):\n    return 'hello ' + name\n")
    rb.commit("Add the greeting")
    config = (
        "def helper(x):\n"
        "    return x + 1\n"
        "\n"
        "\n"
        "\n"
        "\n"
        "def settings():\n"
        f'    aws = "{AWS_KEY}"\n'
        f'    gh = "{GITHUB_TOKEN}"\n'
        f'    pem = """{PRIVATE_KEY}"""\n'
        f'    db = "postgres://app:{URL_PASSWORD}@db.internal:5432/app"\n'
        f'    password = "{KEYWORD_SECRET}"\n'
        f'    signing = "{HIGH_ENTROPY}"\n'
        f'    owner = "{EMAIL}"\n'
        "    return aws, gh, pem, db, password, signing, owner\n"
    )
    rb.write("config.py", config)
    rb.commit(
        f"Add the settings\n\nAsk {MESSAGE_EMAIL}; staging is https://deploy:{MESSAGE_URL_PASSWORD}@staging.example.com/"
    )
    rb.write("config.py", config.replace("return x + 1", "return x + 2"))
    rb.commit("Fix the helper's step")


def test_no_planted_secret_reaches_the_llm_or_any_output(tmp_path, monkeypatch):
    _history(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    with ChatServer(api_key="sk-test-local", models=("test-model",)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")
        monkeypatch.setenv("LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("LLM_MODEL_NAME", "test-model")
        cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}", "llm.runner=local"])
        add_repo(str(tmp_path / "src"), "planted", cfg.pipeline)
        summary = run_pipeline(["planted"], cfg.pipeline, cfg.llm, local=True, progress=False)
        prompts = [r.prompt_text() for r in server.chat_requests()]
    assert len(prompts) >= 4  # tasks of 3 commits and the reasoning of the changed functions
    assert rc_export(tmp_path) == 0

    # 0 planted secrets in any request the server received and in any file written (data, LLM cache, export)
    for secret in PLANTED:
        assert not [p for p in prompts if secret in p], f"{secret} sent to the LLM"
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.relative_to(tmp_path).parts[:1]]
    assert any(p.name == "train.jsonl" for p in files) and any("llm_cache" in str(p) for p in files)
    for p in files:
        data = p.read_bytes()
        for secret in PLANTED:
            assert secret.encode() not in data, f"{secret} written to {p}"
    assert any("<SECRET:aws_key>" in p for p in prompts)  # the model sees where a secret was

    # counts per kind: generate-ast wrote settings() in commits 1 and 2, and commit 1's diff and message
    ast = summary.stages["generate-ast"]["counts"]
    code_kinds = ("aws_key", "github_token", "private_key", "keyword_secret", "high_entropy")
    for kind in code_kinds:
        assert ast[f"secrets_{kind}"] == 3, kind
    assert ast["secrets_url_password"] == 3 + 1  # and the one in commit 1's message
    assert ast["secrets_email"] == 3 + 1
    # the counts are what the files hold
    repo = tmp_path / "data" / "ast_dataset" / "planted"
    written = "".join((c / f).read_text() for c in repo.glob("commit_*") for f in ("ast.jsonl", "commit_data.json"))
    for kind in (*code_kinds, "url_password"):
        assert written.count(f"<SECRET:{kind}>") == ast[f"secrets_{kind}"], kind
    assert written.count("<EMAIL>") == ast["secrets_email"]
    diffs = summary.stages["generate-ast-diffs"]["counts"]
    # settings() added in commit 1 (its code once), commit 1's message once (its records share one metadata)
    assert diffs["secrets_aws_key"] == 1 and diffs["secrets_email"] == diffs["secrets_url_password"] == 1 + 1
    assert summary.stages["generate-fim"]["counts"]["secrets_aws_key"] >= 1
    stats = json.loads((repo / "stats.json").read_text())
    assert stats["generate-ast"]["counts"]["secrets_aws_key"] == 3


def rc_export(tmp_path) -> int:
    return main(
        ["pipeline", "export", f"pipeline.data_dir={tmp_path / 'data'}", "--output-dir", str(tmp_path / "export")]
    )


def test_with_scrubbing_off_the_texts_stay_as_they_are(tmp_path):
    _history(tmp_path / "src")
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}", "pipeline.scrub_secrets=false"])
    add_repo(str(tmp_path / "src"), "planted", cfg.pipeline)
    summary = run_pipeline(
        ["planted"], cfg.pipeline, local=True, progress=False, stages=["generate-ast", "generate-ast-diffs"]
    )
    assert not [k for k in summary.stages["generate-ast"]["counts"] if k.startswith("secrets_")]
    data = (tmp_path / "data" / "ast_dataset" / "planted" / "commit_1" / "commit_data.json").read_text()
    assert AWS_KEY in data and MESSAGE_EMAIL in data and not re.search(r"<SECRET:|<EMAIL>", data)


def test_a_long_diff_is_scrubbed_before_it_is_cut(tmp_path):
    rb = RepoBuilder(tmp_path / "src")
    before = "".join(f"x{i} = {i}\n" for i in range(400))  # ~4.7 kB of diff, then 30 keys (~1 kB), then ~12 kB
    keys = "".join(f'K{i} = "{AWS_KEY[:-2]}{i:02d}"\n' for i in range(30))
    after = "".join(f"y{i} = {i}\n" for i in range(1200))
    rb.write("big.py", before + keys + after)
    rb.commit("Add a big file")
    # the cut (5,200 bytes) falls among the keys; the diff is over twice that, so only its head is scrubbed
    cfg = load_config([f"pipeline.data_dir={tmp_path / 'data'}", "pipeline.max_diff_bytes=5200"])
    add_repo(str(tmp_path / "src"), "big", cfg.pipeline)
    summary = run_pipeline(["big"], cfg.pipeline, local=True, progress=False, stages=["generate-ast"])
    data = json.loads((tmp_path / "data" / "ast_dataset" / "big" / "commit_0" / "commit_data.json").read_text())
    assert data["diff_truncated"] and len(data["diff"].encode()) <= 5200
    assert "<SECRET:aws_key>" in data["diff"] and "AKIA" not in data["diff"]
    assert summary.stages["generate-ast"]["counts"]["diffs_truncated"] == 1
