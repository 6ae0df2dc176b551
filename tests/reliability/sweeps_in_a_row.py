"""N small sweeps in a row at tune.max_concurrent_trials=2 on this machine's local Ray (docs/reliability.md, round two):
per sweep the trials done / stopped early / failed, the seconds, and the load average before and after.

    PYTHONPATH=. .venv/bin/python tests/reliability/sweeps_in_a_row.py [N] [FOLDER]

Not a test (minutes of Ray): the numbers it prints go into docs/reliability.md."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.hybrid.conftest import make_pairs  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(n: int = 10, folder: str | None = None) -> int:
    work = Path(folder or tempfile.mkdtemp(prefix="sweeps-"))
    (work / "datasets" / "io_pairs").mkdir(parents=True, exist_ok=True)
    make_pairs(work / "datasets" / "io_pairs" / "train.jsonl", 48, 0)
    make_pairs(work / "datasets" / "io_pairs" / "validation.jsonl", 8, 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)  # this machine's own local Ray, as a user runs it
    lost = 0
    print("| sweep | done | stopped early | failed | seconds | load before | load after |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for i in range(1, n + 1):
        before, t0 = loadavg(), time.time()
        out = f"outputs/row-{i}"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "hybrid",
                "tune",
                "tune=small",
                "model=tiny_llama_hybrid",
                "train=tiny",
                "train.eval_every=2",
                "tune.max_concurrent_trials=2",
                "data.train=datasets/io_pairs/train.jsonl",
                "data.validation=datasets/io_pairs/validation.jsonl",
                f"tune.output_dir={out}",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        rows = (
            list(csv.DictReader((work / out / "results.csv").open())) if (work / out / "results.csv").exists() else []
        )
        count = {s: sum(r["status"] == s for r in rows) for s in ("done", "stopped early", "failed")}
        failed = count["failed"] + (4 - len(rows))
        lost += failed
        print(
            f"| {i} | {count['done']} | {count['stopped early']} | {failed} | {time.time() - t0:.0f} | {before} | "
            f"{loadavg()} |",
            flush=True,
        )
        if run.returncode != 0 or failed:
            print(
                f"  exit {run.returncode}: {run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else ''}",
                flush=True,
            )
    print(f"{n} sweeps, {lost} trial(s) lost")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:]))))
