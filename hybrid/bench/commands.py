"""`hybrid bench NAME`: each benchmark is a module `hybrid.bench.NAME` with `add_arguments(p)` and `run(args)`.

The modules must be light to import (heavy imports inside `run`)."""

from __future__ import annotations

import importlib

BENCHES = {
    "datagen": "AST + diff stages vs `git log -p --first-parent`",
    "llm": "LLM stages against a local chat-completions server under a rate limit",
    "model": "forward+backward tokens/s of the model variants vs transformers",
    "train": "training tokens/s with 1 and 2 Ray Train workers, peak memory",
    "tune": "a sweep's overhead per trial over plain training runs, and its speed-up with 2 concurrent trials",
    "memory": "external memory stores: searches/s, latency, recall",
    "recall": "long-context recall across four memory variants",
    "code-memory": "does the memory help on the mined code? five variants on long-file changes, beyond vs within",
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (datagen, llm, model, train, tune, memory, recall, code-memory)")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, text in BENCHES.items():
        bp = bench_sub.add_parser(name, help=text)
        module = importlib.import_module(f"hybrid.bench.{name.replace('-', '_')}")
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)
