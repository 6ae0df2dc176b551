"""`hybrid bench llm`: the LLM stages against the local chat-completions server under a rate limit.

The server (hybrid/bench/chat_server.py) answers after `--latency` seconds and injects faults: `--p429` of the
requests get 429 with `retry-after-ms` (and `retry-after`, as OpenAI sends both), `--p500` get 500. The bench
builds a synthetic dataset (`--commits` commits × `--functions` changed functions), runs generate-tasks and then
generate-reasoning on the Ray Data actor pool at `--rpm` requests per minute, and reports, per stage and overall:
requests/s the server saw against the limit, the most requests in any 10-second window, and items lost (an item
neither in its output file nor in the failures record). Targets: >= 95 % of the rate, <= 110 % in any 10-s
window, 0 lost. Exit code 0 when all are met.
"""

from __future__ import annotations

import argparse

from hybrid.cli import non_negative_float, non_negative_int, positive_float, positive_int, probability


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument(
        "--rpm", type=positive_float, default=600, help="configured requests per minute (default 600 = 10/s)"
    )
    p.add_argument("--commits", type=positive_int, default=120, help="synthetic commits (one tasks request each)")
    p.add_argument(
        "--functions", type=positive_int, default=5, help="changed functions per commit (one reasoning request each)"
    )
    p.add_argument("--latency", type=non_negative_float, default=0.2, help="server latency per request, seconds")
    p.add_argument("--p429", type=probability, default=0.10, help="fraction of requests answered 429")
    p.add_argument("--p500", type=probability, default=0.05, help="fraction of requests answered 500")
    p.add_argument("--retry-after-ms", type=non_negative_float, default=200, help="retry-after-ms sent with each 429")
    p.add_argument("--actors", type=positive_int, default=2, help="actors in the Ray Data pool")
    p.add_argument("--runner", choices=("ray", "local"), default="ray", help="Ray Data actor pool or one process")
    p.add_argument("--seed", type=non_negative_int, default=0)


def _dataset(root, commits: int, functions: int) -> None:
    import json

    from hybrid.core.layout import COMMIT_DATA, DIFF_AST, DatasetLayout

    layout = DatasetLayout(root)
    for n in range(commits):
        d = layout.local_commit_dir("bench", n)
        d.mkdir(parents=True)
        h = f"{n + 1:040x}"
        names = [f"fn_{n}_{k}" for k in range(functions)]
        diff = "".join(
            f"diff --git a/src/m{n}.py b/src/m{n}.py\n@@ -0,0 +1,3 @@\n"
            f"+def {name}(x):\n+    y = x * {k}\n+    return y\n"
            for k, name in enumerate(names)
        )
        (d / COMMIT_DATA).write_text(
            json.dumps(
                {
                    "repo": "bench",
                    "commit_number": n,
                    "commit_hash": h,
                    "parents": [f"{n:040x}"],
                    "author": "Bench",
                    "date": "2026-01-01T00:00:00+00:00",
                    "message": f"Add helpers batch {n}",
                    "files": [],
                    "diff": diff,
                }
            )
        )
        with open(d / DIFF_AST, "w") as f:
            for k, name in enumerate(names):
                status = ("added", "modified", "deleted")[k % 3]
                code = f"def {name}(x):\n    y = x * {k}\n    return y\n"
                f.write(
                    json.dumps(
                        {
                            "id": f"src/m{n}.py::function::{name}",
                            "file": f"src/m{n}.py",
                            "old_file": None,
                            "language": "python",
                            "kind": "function",
                            "name": name,
                            "status": status,
                            "whitespace_only": False,
                            "before_code": None if status == "added" else code.replace("* ", "+ "),
                            "after_code": None if status == "deleted" else code,
                            "before_range": None,
                            "after_range": None,
                            "commit_metadata": {
                                "repo": "bench",
                                "commit_number": n,
                                "commit_hash": h,
                                "date": "",
                                "message": f"Add helpers batch {n}",
                            },
                        }
                    )
                    + "\n"
                )


def _lost(root, stage: str, commits: int, functions: int) -> tuple[int, int]:
    """(items lost, items in the failures record)."""
    import json

    from hybrid.core.layout import REASONING, TASKS, DatasetLayout

    layout = DatasetLayout(root)
    failed = set()
    path = layout.local(layout.failures_file("bench"))
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["stage"] == stage:
                failed.add((r["commit_number"], r.get("function_id")))
    lost = 0
    for n in range(commits):
        d = layout.local_commit_dir("bench", n)
        if stage == "generate-tasks":
            ok = (d / TASKS).exists()
            lost += not ok and (n, None) not in failed
        else:
            have = (
                {e["function_id"] for e in json.loads((d / REASONING).read_text())}
                if (d / REASONING).exists()
                else set()
            )
            for k in range(functions):
                fid = f"src/m{n}.py::function::fn_{n}_{k}"
                lost += fid not in have and (n, fid) not in failed
    return lost, len(failed)


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time
    from pathlib import Path

    from pydantic import SecretStr
    from rich.console import Console
    from rich.table import Table

    from hybrid.bench.chat_server import ChatServer
    from hybrid.cli.config import load_config
    from hybrid.core.io import atomic_write_json
    from pipelines.llm.runner import run_llm_stage
    from pipelines.llm.settings import LLMSettings

    console = Console(stderr=True)
    rate = args.rpm / 60.0
    results: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("func", "json")}, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="hybrid-bench-llm-") as tmp:
        root = Path(tmp) / "data"
        _dataset(root, args.commits, args.functions)
        cfg = load_config(
            [
                f"llm.requests_per_minute={args.rpm}",
                "llm.tokens_per_minute=100000000",
                f"llm.num_actors={args.actors}",
                f"llm.runner={args.runner}",
                "llm.max_retries=8",
                f"pipeline.data_dir={root}",
            ]
        ).llm
        server = ChatServer(
            latency=args.latency,
            p429=args.p429,
            p500=args.p500,
            retry_after=1.0,
            retry_after_ms=args.retry_after_ms,
            seed=args.seed,
            api_key="sk-bench-not-a-secret",
            models=("bench-model",),
        )
        with server:
            settings = LLMSettings(
                OPENAI_API_KEY=SecretStr("sk-bench-not-a-secret"),
                LLM_BASE_URL=server.base_url,
                LLM_MODEL_NAME="bench-model",
            )
            if args.runner == "ray":
                from hybrid.core.ray_utils import init_ray

                init_ray()  # started before the clock: Ray's start-up is not the stage's throughput
            for stage, items in (
                ("generate-tasks", args.commits),
                ("generate-reasoning", args.commits * args.functions),
            ):
                mark = len(server.chat_requests())
                t0 = time.monotonic()
                totals = run_llm_stage(stage, cfg, settings, root, [], console=console)
                wall = time.monotonic() - t0
                reqs = server.chat_requests()[mark:]
                times = sorted(r.t for r in reqs)
                span = times[-1] - times[0] if len(times) > 1 else float("nan")
                lost, failed = _lost(root, stage, args.commits, args.functions)
                faults: dict = {}
                for r in reqs:
                    faults[r.fault] = faults.get(r.fault, 0) + 1
                results["stages"][stage] = {
                    "items": items,
                    "requests": len(reqs),
                    "faults": faults,
                    "first_to_last_request_s": round(span, 2),
                    "wall_s": round(wall, 2),
                    "achieved_rps": round((len(reqs) - 1) / span, 3),
                    "achieved_fraction": round((len(reqs) - 1) / span / rate, 4),
                    "failed_recorded": failed,
                    "lost": lost,
                    "retries": totals.client_totals().get("retries", 0),
                }
        # windows over the whole run: the stages follow each other, so a window never holds more than one's work
        window = server.max_in_window(10.0)
        all_stages = results["stages"].values()
        spans = sum(s["first_to_last_request_s"] for s in all_stages)
        n = sum(s["requests"] - 1 for s in all_stages)
        results.update(
            {
                "limit_rps": round(rate, 3),
                "achieved_rps": round(n / spans, 3),
                "achieved_fraction": round(n / spans / rate, 4),
                "max_requests_in_10s": window,
                "max_10s_fraction": round(window / (rate * 10), 4),
                "items_lost": sum(s["lost"] for s in all_stages),
                "items_failed_recorded": sum(s["failed_recorded"] for s in all_stages),
            }
        )
    results["targets_met"] = bool(
        results["achieved_fraction"] >= 0.95 and results["max_10s_fraction"] <= 1.10 and results["items_lost"] == 0
    )
    table = Table(
        title=f"bench llm: limit {args.rpm:g} req/min ({rate:.2f}/s), latency {args.latency * 1000:.0f} ms, "
        f"{args.p429:.0%} 429 / {args.p500:.0%} 500, {args.actors} actors ({args.runner})"
    )
    for col in ("stage", "items", "requests", "req/s", "of limit", "lost", "failed", "span s"):
        table.add_column(col)
    for stage, s in results["stages"].items():
        table.add_row(
            stage,
            str(s["items"]),
            str(s["requests"]),
            f"{s['achieved_rps']:.2f}",
            f"{s['achieved_fraction']:.1%}",
            str(s["lost"]),
            str(s["failed_recorded"]),
            f"{s['first_to_last_request_s']:.1f}",
        )
    Console().print(table)
    Console().print(
        f"overall {results['achieved_rps']:.2f} req/s = {results['achieved_fraction']:.1%} of the limit "
        f"(target >= 95%); max in any 10 s: {window} = {results['max_10s_fraction']:.1%} of 10 s at the limit "
        f"(target <= 110%); items lost: {results['items_lost']} (target 0) -> "
        f"{'targets met' if results['targets_met'] else 'TARGETS MISSED'}",
        highlight=False,
    )
    if args.json:
        atomic_write_json(args.json, results)
    return 0 if results["targets_met"] else 1
