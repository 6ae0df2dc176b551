"""Secrets in URLs whose password holds `/`, `#`, `?` or `:` (AWS secret keys often hold `/`): never printed — not
in our messages, not in a third party's (pyarrow's, git's) that we pass on as one line — and never stored
(docs/reliability.md, "Round two: secrets, Unicode, misc")."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import SECRET, assert_one_line_error, closed_port, run_main, tree

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # the shape of an AWS secret key: it holds `/`
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def pieces(secret: str) -> tuple[str, ...]:
    """The secret and each part of it a parser may cut out at `/`, `#`, `?`, `:` (a message must show none)."""
    import re

    return (secret, *[p for p in re.split(r"[/#?:@]", secret) if len(p) >= 4])


@pytest.mark.parametrize(
    "url,secret",
    [
        ("http://user:pa/ssw0rd@host/v1", "pa/ssw0rd"),
        ("https://user:pa#ss?w:rd@host:8000/v1?key=k", "pa#ss?w:rd"),
        (f"s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/x.jsonl", AWS_SECRET),
        (f"https://{AWS_KEY_ID}:{AWS_SECRET}@host/x.git", AWS_SECRET),
    ],
)
def test_redact_url_takes_the_userinfo_up_to_the_last_at(url, secret):
    from hybrid.core.redact import redact_text, redact_url, split_userinfo

    shown = redact_url(url)
    assert shown.startswith(url.split("://")[0] + "://***@") and ("host" in shown or "bucket" in shown), shown
    for s in pieces(secret):
        assert s not in shown
        assert s not in redact_text(f"Cannot parse URI: '{url}' due to syntax error", url)
    stored, user, password = split_userinfo(url)
    assert password == secret and secret not in stored and "@" not in stored.split("://")[1].split("/")[0]


def test_llm_base_url_with_a_slash_in_its_password(tmp_path, monkeypatch, capsys):
    """test-llm printed the URL whole (urlsplit takes `pa` for the port and the rest for the path)."""
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for secret in ("pa/ssw0rd-Q7w9E2", "pa#ssw0rd-Q7w9E2", "1234#ssw0rd-Q7w9E2"):
        monkeypatch.setenv("LLM_BASE_URL", f"http://user:{secret}@127.0.0.1:{closed_port()}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        rc, out, err = run_main(["pipeline", "test-llm", "--requests", "1"], capsys)
        assert_one_line_error(rc, err, "LLM_BASE_URL", out=out, secrets=(SECRET, *pieces(secret)))


def test_training_data_uri_with_a_slash_in_the_secret_key(tmp_path, capsys):
    """Our message and pyarrow's (`Cannot parse URI: '…'`) both showed the key."""
    uri = f"s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/x.jsonl"
    rc, out, err = run_main(
        ["train", "model=tiny_llama_hybrid", "train=tiny", f"data.train={uri}", f"train.output_dir={tmp_path / 'run'}"],
        capsys,
    )
    assert_one_line_error(rc, err, "s3://***@bucket", out=out, secrets=(SECRET, *pieces(AWS_SECRET), AWS_KEY_ID))
    assert tree(tmp_path) == {}


def test_repos_add_with_a_slash_in_the_token(tmp_path, capsys):
    data = tmp_path / "data"
    token = "to/ken-Q7w9E2r4T6y8"
    rc, out, err = run_main(
        ["repos", "add", f"https://user:{token}@127.0.0.1:{closed_port()}/x.git", f"pipeline.data_dir={data}"], capsys
    )
    assert_one_line_error(rc, err, "cannot clone", out=out, secrets=pieces(token))
    assert tree(data) == {}


def test_every_error_line_goes_through_the_redactor(capsys):
    """A message the command layer prints is redacted whatever raised it (here an OSError naming a URI)."""
    from hybrid.cli import run_command

    def fails(_):
        raise OSError(2, "No such file", f"s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/x")

    assert run_command(fails, None) == 2
    err = capsys.readouterr().err
    assert "s3://***@bucket/x" in err
    for s in (*pieces(AWS_SECRET), AWS_KEY_ID):
        assert s not in err
