"""Answers cached on disk by a hash of everything that decides them (model, messages, schema, temperature).

One small JSON file per answer, written atomically, under `<data_dir>/llm_cache/<2 hex>/<64 hex>.json`: many
actors (and machines sharing the data directory) write it without locks, and a run killed part-way leaves every
answer it received behind, so the next run asks nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hybrid.core.io import atomic_write_json


def cache_key(model: str, messages: list[dict], schema: dict | None, temperature: float, max_tokens: int) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "schema": schema, "temperature": temperature, "max_tokens": max_tokens},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        if self.root is None:
            return None
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is a miss, not an error: the answer is asked again
        return record.get("answer") if isinstance(record, dict) else None

    def put(self, key: str, answer: Any, model: str, usage: dict | None = None) -> None:
        if self.root is None:
            return
        atomic_write_json(self._path(key), {"model": model, "answer": answer, "usage": usage or {}}, indent=None)
