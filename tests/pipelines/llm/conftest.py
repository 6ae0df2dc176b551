"""Fixtures for the LLM stages: a real chat-completions server on 127.0.0.1 and a small dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_helpers import API_KEY, MODEL, make_dataset

from hybrid.bench.chat_server import ChatServer


@pytest.fixture
def server():
    with ChatServer(api_key=API_KEY, models=(MODEL,), retry_after=0.2) as s:
        yield s


@pytest.fixture
def llm_env(server, monkeypatch, tmp_path):
    """The environment a user sets (key, base URL, model), and a working directory without a .env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("LLM_MODEL_NAME", MODEL)
    return server


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    make_dataset(d)
    return d
