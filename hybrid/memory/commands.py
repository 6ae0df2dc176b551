"""`hybrid memory stats|build`: look at and fill the shared external-memory service (issue 6). Light module."""

from __future__ import annotations

import argparse

STATS_EXAMPLE = "hybrid memory stats memory.service=hybrid-memory memory.num_shards=2"
BUILD_EXAMPLE = ("hybrid memory build --checkpoint runs/tiny --namespace myrepo --repo PATH --commit HEAD "
                 "memory.num_shards=2")


def register(sub) -> None:
    p = sub.add_parser("memory", help="the shared external-memory service (stats, build)")
    msub = p.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")

    s = msub.add_parser("stats", help="per shard: namespaces, vectors, bytes, searches/s, p50/p99 latency",
                        description=f"Joins the Ray cluster (RAY_ADDRESS, else the one running on this machine). "
                                    f"Example: {STATS_EXAMPLE}")
    s.add_argument("overrides", nargs="*", help="key=value config overrides (memory.service, memory.num_shards)")
    s.add_argument("--namespaces", action="store_true", help="also list each shard's namespaces")
    s.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    s.set_defaults(func=run_stats)

    b = msub.add_parser("build", help="fill a shared namespace from a corpus with a trained model",
                        description="Runs the checkpoint's model over a repository's files at a commit, or over a "
                                    "file of demonstrations (JSONL IO pairs or .txt lines), writing its retrieval "
                                    f"layers' chunks into one namespace of the service. Example: {BUILD_EXAMPLE}")
    b.add_argument("overrides", nargs="*", help="key=value config overrides (memory.*)")
    b.add_argument("--checkpoint", required=True, help="checkpoint folder (or a training output folder → its best)")
    b.add_argument("--namespace", required=True, help="the shared namespace to fill (replaced if it exists)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", help="a git repository: its files at --commit")
    src.add_argument("--demonstrations", help="JSONL/Parquet IO pairs, or a .txt file with one text per line")
    b.add_argument("--commit", default="HEAD", help="with --repo: the commit (any revision) to read")
    b.add_argument("--max-file-bytes", type=int, default=200_000, help="with --repo: skip larger files")
    b.add_argument("--capacity-tokens", type=int, default=None,
                   help="tokens the namespace keeps (oldest evicted); default: the checkpoint's external_memory_size")
    b.add_argument("--batch-segments", type=int, default=4, help="segments per forward pass")
    b.add_argument("--json", metavar="FILE", help="also write what was built as JSON")
    b.set_defaults(func=run_build)


def _connect_cluster() -> None:
    import os

    import ray

    from hybrid.errors import HybridError

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    except ConnectionError:
        raise HybridError("no Ray cluster to read the memory service from: start one with `ray start --head` "
                          "(the service lives in its detached actors) or set RAY_ADDRESS") from None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_stats(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybrid.config import load_config
    from hybrid.memory.ray_store import RAY_NAMESPACE, connect_shards, shard_name
    from hybrid.utils.io import atomic_write_json

    cfg = load_config(args.overrides).memory
    _connect_cluster()
    import ray

    shards = connect_shards(cfg.service, cfg.num_shards, create=False)
    rows = []
    for i, h in enumerate(shards):
        try:
            rows.append(ray.get(h.stats.remote(args.namespaces), timeout=cfg.call_timeout_s))
        except Exception as e:
            rows.append({"shard": i, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
    table = Table(title=f"memory service {cfg.service!r}: actors {shard_name(cfg.service, 0)}.."
                        f"{cfg.num_shards - 1} in Ray namespace {RAY_NAMESPACE!r}")
    for col in ("shard", "namespaces", "vectors", "bytes", "of", "searches/s", "p50 ms", "p99 ms",
                "restarted"):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(str(r["shard"]), r["error"], *[""] * 7)
            continue
        table.add_row(str(r["shard"]), str(r["namespaces"]), f"{r['vectors']:,}", _fmt_bytes(r["bytes"]),
                      _fmt_bytes(r["shard_bytes"]), f"{r['searches_per_s']:,.0f}",
                      "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}",
                      "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}", "yes" if r["restarted"] else "no")
    Console(width=max(100, Console().width)).print(table)
    if args.namespaces:
        for r in rows:
            for ns, info in sorted(r.get("namespace_list", {}).items()):
                print(f"shard {r['shard']}  {ns}  {info['vectors']:,} vectors  {_fmt_bytes(info['bytes'])}  "
                      f"{info['index']}")
    if args.json:
        atomic_write_json(args.json, {"service": cfg.service, "shards": rows})
    return 0


def _texts_from_repo(path: str, commit: str, max_bytes: int) -> tuple[list[str], dict[str, int]]:
    import pygit2

    from hybrid.errors import HybridError

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


def _texts_from_demonstrations(path: str) -> list[str]:
    from pathlib import Path

    from hybrid.data.io_pairs import read_io_pairs
    from hybrid.errors import HybridError

    p = Path(path)
    if p.suffix == ".txt":
        if not p.is_file():
            raise HybridError(f"--demonstrations: {path} does not exist")
        lines = [line for line in p.read_text().splitlines() if line.strip()]
        if not lines:
            raise HybridError(f"--demonstrations: {path} has no text lines")
        return lines
    return [f"{r['input']}\n{r['output']}" for r in read_io_pairs(path).records]


def run_build(args: argparse.Namespace) -> int:
    import time

    import torch

    from hybrid.config import load_config
    from hybrid.errors import HybridError
    from hybrid.memory.ray_store import RayShardedStore
    from hybrid.training.evaluate import load
    from hybrid.utils.io import atomic_write_json

    cfg = load_config(args.overrides).memory
    if args.repo:
        texts, skipped = _texts_from_repo(args.repo, args.commit, args.max_file_bytes)
    else:
        texts, skipped = _texts_from_demonstrations(args.demonstrations), {}
    if not texts:
        raise HybridError("memory build: the corpus has no text")
    ck = load(args.checkpoint, device="cpu")
    model, tok = ck.model, ck.tokenizer
    mcfg = model.config
    if not mcfg.retrieval_layer_ids:
        raise HybridError(f"{ck.path}: the model has no external-memory retrieval layers to build a memory for")
    if args.capacity_tokens is not None:
        if args.capacity_tokens < mcfg.chunk_size:
            raise HybridError(f"--capacity-tokens: {args.capacity_tokens} is smaller than the chunk size "
                              f"{mcfg.chunk_size}")
        mcfg.external_memory_size = args.capacity_tokens
    _connect_cluster()  # the shards must live in the cluster, not in a Ray that ends with this command
    stream: list[int] = []
    for text in texts:
        stream.extend(tok.encode(text) + [tok.eos_id])
    S = mcfg.segment_length
    n = len(stream) // S * S  # whole segments only (a partial last one is not written)
    t0 = time.time()
    store = RayShardedStore.from_config(cfg, mcfg)
    store.reset([f"{args.namespace}/layer{i}" for i in mcfg.retrieval_layer_ids])
    window = S * max(1, args.batch_segments)
    with torch.no_grad():
        for start in range(0, n, window):
            ids = torch.tensor([stream[start:min(n, start + window)]], dtype=torch.long)
            model(ids, memory_store=store, namespaces=[args.namespace])
    store.flush()
    info = store.namespace_info(args.namespace) if n else {"vectors": 0, "bytes": 0, "parts": 0}
    result = {"namespace": args.namespace, "service": cfg.service, "texts": len(texts), "tokens": len(stream),
              "tokens_written": n, "skipped": skipped, "retrieval_layers": mcfg.retrieval_layer_ids,
              "vectors": info["vectors"], "bytes": info["bytes"], "seconds": round(time.time() - t0, 2)}
    print(f"memory {args.namespace!r} on service {cfg.service!r}: {len(texts)} texts, {n:,} of {len(stream):,} "
          f"tokens written ({mcfg.chunks_capacity:,} chunks kept per layer and kv head), {info['vectors']:,} "
          f"vectors, {info['bytes']:,} bytes reserved" + (f"; skipped {skipped}" if any(skipped.values()) else ""))
    if args.json:
        atomic_write_json(args.json, result)
    return 0
