"""Answers cached on disk by a hash of everything that decides them (model, messages, schema, temperature).

One small JSON file per answer, written atomically, under `<data_dir>/llm_cache/<2 hex>/<64 hex>.json`: many
actors (and machines sharing the data directory) write it without locks, and a run killed part-way leaves every
answer it received behind, so the next run asks nothing twice. With the data folder on object storage the cache is
there too (one GET per question, one PUT per answer, through hybrid.core.storage): every node sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.io import json_text


def cache_key(model: str, messages: list[dict], schema: dict | None, temperature: float, max_tokens: int) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "schema": schema, "temperature": temperature, "max_tokens": max_tokens},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, root: str | os.PathLike[str] | None):
        self.root = str(root) if root else None

    def _path(self, key: str) -> str:
        assert self.root is not None
        return storage.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> Any | None:
        if self.root is None:
            return None
        try:
            record = json.loads(storage.read_text(self._path(key)))
        except (FileNotFoundError, HybridError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # missing, torn or foreign: a miss, not an error: the answer is asked again
        return record.get("answer") if isinstance(record, dict) else None

    def put(self, key: str, answer: Any, model: str, usage: dict | None = None) -> None:
        if self.root is None:
            return
        # (the bytes atomic_write_json(indent=None) writes; atomic locally, one PUT on object storage)
        storage.write_text(self._path(key), json_text({"model": model, "answer": answer, "usage": usage or {}}, None))
