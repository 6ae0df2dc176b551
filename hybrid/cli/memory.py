"""`hybrid memory stats|build`: look at and fill the shared external-memory service."""

from __future__ import annotations

import argparse

from hybrid.cli import config_and_words, positive_int
from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_json

STATS_EXAMPLE = "hybrid memory stats memory.service=hybrid-memory memory.num_shards=2"
BUILD_EXAMPLE = (
    "hybrid memory build --checkpoint runs/tiny --namespace myrepo --repo PATH --commit HEAD memory.num_shards=2"
)


def register(sub) -> None:
    p = sub.add_parser("memory", help="the shared external-memory service (stats, build)")
    msub = p.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")

    s = msub.add_parser(
        "stats",
        help="per shard: its node, namespaces, vectors, bytes, searches/s, p50/p99 latency",
        description=f"Joins the Ray cluster (RAY_ADDRESS, else the one `ray start` started on this "
        f"machine). "
        f"Example: {STATS_EXAMPLE}",
    )
    s.add_argument("overrides", nargs="*", help="key=value config overrides (memory.service, memory.num_shards)")
    s.add_argument("--namespaces", action="store_true", help="also list each shard's namespaces")
    s.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    s.set_defaults(func=run_stats)

    b = msub.add_parser(
        "build",
        help="fill a shared namespace from a corpus with a trained model",
        description="Runs the checkpoint's model over a repository's files at a commit, or over a "
        "file of demonstrations (JSONL IO pairs or .txt lines), writing its retrieval "
        f"layers' chunks into one namespace of the service. Example: {BUILD_EXAMPLE}",
    )
    b.add_argument("overrides", nargs="*", help="key=value config overrides (memory.*)")
    b.add_argument("--checkpoint", required=True, help="checkpoint folder (or a training output folder → its best)")
    b.add_argument("--namespace", required=True, help="the shared namespace to fill (replaced if it exists)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", help="a git repository: its files at --commit")
    src.add_argument("--demonstrations", help="JSONL/Parquet IO pairs, or a .txt file with one text per line")
    b.add_argument("--commit", default="HEAD", help="with --repo: the commit (any revision) to read")
    b.add_argument("--max-file-bytes", type=positive_int, default=200_000, help="with --repo: skip larger files")
    b.add_argument(
        "--capacity-tokens",
        type=positive_int,
        default=None,
        help="tokens the namespace keeps (oldest evicted); default: the checkpoint's external_memory_size",
    )
    b.add_argument("--batch-segments", type=positive_int, default=4, help="segments per forward pass")
    b.add_argument("--json", metavar="FILE", help="also write what was built as JSON")
    b.set_defaults(func=run_build)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_stats(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybrid.core.ray_utils import connect_cluster
    from hybrid.memory.ray_store import RAY_NAMESPACE, connect_shards, shard_name

    config, rest = config_and_words(args.overrides)
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like memory.num_shards=2)")
    cfg = config.memory
    connect_cluster()
    import ray

    shards = connect_shards(cfg.service, cfg.num_shards, create=False)
    rows = []
    for i, h in enumerate(shards):
        try:
            rows.append(ray.get(h.stats.remote(args.namespaces), timeout=cfg.call_timeout_s))
        except Exception as e:
            rows.append({"shard": i, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
    table = Table(
        title=f"memory service {cfg.service!r}: actors {shard_name(cfg.service, 0)}.."
        f"{cfg.num_shards - 1} in Ray namespace {RAY_NAMESPACE!r}"
    )
    cols = ("shard", "node", "namespaces", "vectors", "bytes", "of", "searches/s", "p50 ms", "p99 ms", "restarted")
    for col in cols:
        if col == "node":  # "<ip> <node id>": two nodes on one machine share an IP
            table.add_column(col, no_wrap=True, min_width=18)
        else:
            table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(str(r["shard"]), r["error"], *[""] * (len(cols) - 2))
            continue
        table.add_row(
            str(r["shard"]),
            str(r.get("node", "?")),  # a shard started by an older version does not say
            str(r["namespaces"]),
            f"{r['vectors']:,}",
            _fmt_bytes(r["bytes"]),
            _fmt_bytes(r["shard_bytes"]),
            f"{r['searches_per_s']:,.0f}",
            "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}",
            "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}",
            "yes" if r["restarted"] else "no",
        )
    Console(width=max(120, Console().width)).print(table)
    if args.namespaces:
        for r in rows:
            for ns, info in sorted(r.get("namespace_list", {}).items()):
                print(
                    f"shard {r['shard']}  {ns}  {info['vectors']:,} vectors  {_fmt_bytes(info['bytes'])}  "
                    f"{info['index']}"
                )
    if args.json:
        atomic_write_json(args.json, {"service": cfg.service, "shards": rows})
    return 0


def run_build(args: argparse.Namespace) -> int:
    from hybrid.training.build_memory import build_memory, texts_from_demonstrations, texts_from_repo

    cfg, rest = config_and_words(args.overrides)
    if rest:
        raise HybridError(f"unexpected argument {rest[0]!r} (overrides look like memory.num_shards=2)")
    if args.repo:
        texts, skipped = texts_from_repo(args.repo, args.commit, args.max_file_bytes)
    else:
        texts, skipped = texts_from_demonstrations(args.demonstrations), {}
    result = build_memory(args.checkpoint, args.namespace, texts, cfg.memory, args.capacity_tokens, args.batch_segments)
    result["skipped"] = skipped
    print(
        f"memory {result['namespace']!r} on service {result['service']!r}: {result['texts']} texts, "
        f"{result['tokens_written']:,} of {result['tokens']:,} tokens written ({result['chunks_capacity']:,} chunks "
        f"kept per layer and kv head), {result['vectors']:,} vectors, {result['bytes']:,} bytes reserved"
        + (f"; skipped {skipped}" if any(skipped.values()) else "")
    )
    if args.json:
        atomic_write_json(args.json, result)
    return 0
