"""`hybrid memory build`'s work: run a trained model over a corpus (a repository's files at a commit, or a file
of demonstrations) and write its retrieval layers' chunks into one namespace of the Ray memory service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hybrid.config.memory import MemoryConfig
from hybrid.core.errors import HybridError
from hybrid.core.ray_utils import connect_cluster
from hybrid.core.text import read_text_lines
from hybrid.data.io_pairs import read_io_pairs
from hybrid.memory.ray_store import RayShardedStore
from hybrid.memory.store import layer_namespace
from hybrid.training.code_memory import write_corpus
from hybrid.training.evaluate import load


def texts_from_repo(path: str, commit: str, max_bytes: int) -> tuple[list[str], dict[str, int]]:
    import pygit2

    try:
        repo = pygit2.Repository(path)
    except (pygit2.GitError, KeyError):
        raise HybridError(f"--repo: {path} is not a git repository") from None
    try:
        tree = repo.revparse_single(commit).peel(pygit2.Commit).tree
    except (KeyError, ValueError, pygit2.GitError):
        raise HybridError(f"--commit: {commit!r} is not a commit of {path}") from None
    texts, skipped = [], {"binary": 0, "too_large": 0}

    def walk(t, prefix):
        for entry in t:
            full = f"{prefix}{entry.name}"
            if entry.type_str == "tree":
                walk(repo[entry.id], full + "/")
            elif entry.type_str == "blob":
                blob = repo[entry.id]
                if blob.size > max_bytes:
                    skipped["too_large"] += 1
                elif blob.is_binary:
                    skipped["binary"] += 1
                else:
                    texts.append(f"# file: {full}\n{blob.data.decode('utf-8', 'replace')}")

    walk(tree, "")
    return texts, skipped


def texts_from_demonstrations(path: str) -> list[str]:
    p = Path(path)
    if p.suffix == ".txt":
        lines = read_text_lines(p, "--demonstrations")
        if not lines:
            raise HybridError(f"--demonstrations: {path} has no text lines")
        return lines
    return [f"{r['input']}\n{r['output']}" for r in read_io_pairs(path).records]


def build_memory(
    checkpoint: str | Path,
    namespace: str,
    texts: list[str],
    memory_cfg: MemoryConfig,
    capacity_tokens: int | None = None,
    batch_segments: int = 4,
) -> dict[str, Any]:
    """Fill `namespace` (replaced if it exists) with the checkpoint's retrieval-layer chunks of `texts`."""
    if not texts:
        raise HybridError("memory build: the corpus has no text")
    ck = load(checkpoint, device="cpu")
    model, tok = ck.model, ck.tokenizer
    mcfg = model.config
    if not mcfg.retrieval_layer_ids:
        raise HybridError(f"{ck.path}: the model has no external-memory retrieval layers to build a memory for")
    if capacity_tokens is not None:
        if capacity_tokens < mcfg.chunk_size:
            raise HybridError(f"--capacity-tokens: {capacity_tokens} is smaller than the chunk size {mcfg.chunk_size}")
        mcfg.external_memory_size = capacity_tokens
    connect_cluster()  # the shards must live in the cluster, not in a Ray that ends with this command
    t0 = time.time()
    store = RayShardedStore.from_config(memory_cfg, mcfg.chunks_capacity, mcfg.chunk_size, mcfg.use_gpu_to_search)
    store.reset([layer_namespace(namespace, i) for i in mcfg.retrieval_layer_ids])
    counts = write_corpus(model, tok, store, namespace, texts, batch_segments)
    n, stream_tokens = counts["tokens_written"], counts["tokens"]
    info = store.namespace_info(namespace) if n else {"vectors": 0, "bytes": 0, "parts": 0}
    return {
        "namespace": namespace,
        "service": memory_cfg.service,
        "texts": len(texts),
        "tokens": stream_tokens,
        "tokens_written": n,
        "retrieval_layers": mcfg.retrieval_layer_ids,
        "chunks_capacity": mcfg.chunks_capacity,
        "vectors": info["vectors"],
        "bytes": info["bytes"],
        "seconds": round(time.time() - t0, 2),
    }
