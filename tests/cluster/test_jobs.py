"""`ray job submit` against a real Ray head of the tests' own (tests/conftest.py: every port set, dashboard on,
RAY_AUTH_MODE explicit): the README's "On a cluster" lines run as written (HEAD = this head, BUCKET = a bucket on the
tests' S3 server, the repository's URL a local copy), outputs land in the bucket where the lines say, the dashboard's
REST API lists the jobs as SUCCEEDED, the State API lists the memory shards, their metrics reach the Prometheus
endpoint; a failing job ends FAILED with the one-line error as its last log line; a stopped job resubmitted finishes
with identical outputs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from hybrid.core import storage
from hybrid.main import main
from pipelines.synthetic import build_synthetic_rust_repo
from tests.commands import command_timeout, run_process
from tests.repo_builder import build_sample_repo

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def readme_jobs() -> list[list[str]]:
    """The `ray job submit` lines of the README's "On a cluster" section, as argument lists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a cluster") : text.index("## Benchmarks")]
    return [shlex.split(line) for line in section.splitlines() if line.startswith("ray job submit ")]


REPO_URL = "https://github.com/sharkdp/bat"


def localized(args: list[str], head, bucket: str, repo: Path) -> list[str]:
    """A README line for the tests' head: its dashboard, a bucket on the tests' S3 server, the repository's URL a
    local copy of the same name (no internet here)."""
    dashboard = head.dashboard.removeprefix("http://")
    return [
        RAY
        if a == "ray" and i == 0
        else a.replace("HEAD:8265", dashboard).replace("s3://BUCKET", f"s3://{bucket}").replace(REPO_URL, str(repo))
        for i, a in enumerate(args)
    ]


def job(head, submission_id: str) -> dict:
    return head.get(f"/api/jobs/{submission_id}")


def wait_job(head, submission_id: str, timeout: float = 540) -> dict:
    timeout = command_timeout(timeout)
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job(head, submission_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(2)
    raise AssertionError(f"job {submission_id} still {info['status']} after {timeout:.0f} s")


def logs(head, submission_id: str) -> str:
    return head.get(f"/api/jobs/{submission_id}/logs")["logs"]


def submit(head, *entrypoint: str, submission_id: str, wait: bool = True) -> subprocess.CompletedProcess:
    return run_process(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head.dashboard,
            "--working-dir",
            str(ROOT),
            "--submission-id",
            submission_id,
            *([] if wait else ["--no-wait"]),
            "--",
            *entrypoint,
        ],
        env=head.env,
        cwd=ROOT,
        timeout=540,
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_readme_jobs_run_on_a_real_head(ray_head, s3_server, tmp_path):
    repo = tmp_path / REPO_URL.rsplit("/", 1)[1]  # named as the URL names it
    build_sample_repo(repo)
    bucket = s3_server.bucket()
    lines = readme_jobs()
    assert len(lines) == 2 and all("--working-dir" in line for line in lines)
    suffix = uuid.uuid4().hex[:6]  # submission ids are unique per head
    ids = []
    for line in lines:
        args = localized(line, ray_head, bucket, repo)
        i = args.index("--submission-id") + 1
        args[i] = f"{args[i]}-{suffix}"
        ids.append(args[i])
        done = run_process(args, env=ray_head.env, cwd=ROOT, timeout=540)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert job(ray_head, args[i])["status"] == "SUCCEEDED"

    # the outputs are where the command lines said, in the bucket; nothing in the job's working dir
    root = f"s3://{bucket}"
    assert storage.exists(f"{root}/data/repos/registry.json")
    commits = [name for name, is_dir in storage.list_dir(f"{root}/data/ast_dataset/bat") if name.startswith("commit_")]
    assert len(commits) == 8
    assert storage.read_text(f"{root}/io_pairs/train.jsonl").strip()
    assert storage.exists(f"{root}/runs/tiny/checkpoint_step_000004/model.safetensors")
    listed = {j["submission_id"]: j["status"] for j in ray_head.get("/api/jobs/")}
    assert all(listed[i] == "SUCCEEDED" for i in ids)

    # the memory service's shards: named actors in the State API, their metrics on the Prometheus endpoint
    actors = ray_head.get("/api/v0/actors?limit=1000&detail=false")["data"]["result"]["result"]
    shards = sorted(
        a["name"] for a in actors if a.get("name", "").startswith("hybrid-memory") and a["state"] == "ALIVE"
    )
    assert len(shards) == 2, [a.get("name") for a in actors]
    text = ""
    deadline = time.time() + 90  # actors report metrics every few seconds
    while time.time() < deadline and "ray_hybrid_memory_vectors" not in text:
        with urllib.request.urlopen(f"http://127.0.0.1:{ray_head.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        time.sleep(3)
    assert re.search(r'ray_hybrid_memory_vectors\{[^}]*shard="0"', text), text[-2000:]


def test_a_job_runs_the_submitted_checkout_and_a_failing_one_ends_failed_with_its_error_line(ray_head, tmp_path):
    """One job (each costs a working-dir upload and a driver start): it prints where `hybrid` comes from, then runs a
    training that must fail."""
    sid = f"hybrid-relative-{uuid.uuid4().hex[:6]}"
    which = shlex.join(["python", "-c", "import hybrid; print('hybrid from', hybrid.__file__)"])
    train = shlex.join(
        ["python", "-m", "hybrid", "train", f"data.train={tmp_path / 'x.jsonl'}", "train.output_dir=outputs/lost"]
    )
    done = submit(ray_head, "bash", "-c", f"{which} && {train}", submission_id=sid)
    assert done.returncode != 0
    info = job(ray_head, sid)
    assert info["status"] == "FAILED"
    text = logs(ray_head, sid)
    where = re.search(r"hybrid from (\S+)", text).group(1)
    assert "working_dir_files" in where and not where.startswith(str(ROOT)), where
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: train.output_dir=outputs/lost: a relative folder inside a Ray job"), last


def test_a_stopped_job_resubmitted_finishes_with_the_same_outputs(ray_head, tmp_path):
    build_synthetic_rust_repo(tmp_path / "sample", 300)  # long enough to stop part-way (12 ranges of 25)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for data in (reference, resumed):  # (in this process: the job's driver is the process under test)
        assert main(["repos", "add", str(tmp_path / "sample"), f"pipeline.data_dir={data}"]) == 0
    assert main(["pipeline", "run", "sample", f"pipeline.data_dir={reference}", "--local", "--no-progress"]) == 0
    entry = [
        "python",
        "-m",
        "hybrid",
        "pipeline",
        "run",
        "sample",
        f"pipeline.data_dir={resumed}",
        "pipeline.commits_per_task=25",
        "--no-progress",
    ]
    first = f"hybrid-stop-{uuid.uuid4().hex[:6]}"
    assert submit(ray_head, *entry, submission_id=first, wait=False).returncode == 0
    deadline = time.time() + 300
    out = resumed / "ast_dataset" / "sample"
    while time.time() < deadline and job(ray_head, first)["status"] in ("PENDING", "RUNNING"):
        if out.is_dir() and next(out.glob("commit_*/ast.jsonl"), None):  # part-way: stop it now
            break
        time.sleep(0.2)
    request = urllib.request.Request(f"{ray_head.dashboard}/api/jobs/{first}/stop", method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:  # what `ray job stop` sends
        assert r.status == 200
    status = wait_job(ray_head, first)["status"]
    assert status in ("STOPPED", "SUCCEEDED")
    stopped_part_way = status == "STOPPED"
    second = f"hybrid-again-{uuid.uuid4().hex[:6]}"
    done = submit(ray_head, *entry, submission_id=second)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(resumed.rglob(".tmp*")) and not list(resumed.rglob("*.tmp"))  # nothing half-written
    want, got = tree(reference / "ast_dataset"), tree(resumed / "ast_dataset")
    for summary in (want, got):  # the run's own account (counts of this run, its time), not data
        del summary["sample/stats.json"]
    assert len(want) > 1000 and want.keys() == got.keys() and want == got
    if not stopped_part_way:
        pytest.skip("the first job finished before the stop reached it; identity still checked")
