"""The disk, for the pipeline, export and checkpointing: full (`ulimit -f` in the subprocess: writes past the limit
fail with EFBIG, as on a full disk) and read-only (`chattr +i`: an immutable folder refuses every change, even to
root, as a read-only mount does — mounting one is not possible here). Each: a one-line error naming the place, exit
2, and the previous good outputs intact."""

from __future__ import annotations

import contextlib
import shutil
import subprocess

import pytest

from hybrid.main import main
from tests.commands import run_process
from tests.hybrid.conftest import make_pairs
from tests.reliability.conftest import assert_one_line_error, cli, file_size_limit, tree
from tests.repo_builder import build_sample_repo

TINY = ["model=tiny_llama_hybrid", "train=tiny", "data.max_length=40", "train.eval_every=2", "train.max_iters=4"]


@contextlib.contextmanager
def read_only(folder):
    """`folder` immutable for the block (root ignores permission bits, not this flag)."""
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture(scope="module")
def pipeline_data(tmp_path_factory):
    """A pipeline's outputs, made in this process (not under test); the tests leave them as they found them."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    src, data = tmp_path / "src", tmp_path / "data"
    build_sample_repo(src)
    assert main(["repos", "add", str(src), "--name", "s", f"pipeline.data_dir={data}"]) == 0
    assert main(["pipeline", "run", "s", "--local", "--no-progress", f"pipeline.data_dir={data}"]) == 0
    return data


def test_pipeline_into_a_read_only_folder(pipeline_data):
    out = pipeline_data / "ast_dataset" / "s"
    before = tree(out)
    with read_only(out):
        r = cli("pipeline", "run", "s", "--local", "--no-progress", "--force", f"pipeline.data_dir={pipeline_data}")
    assert_one_line_error(r.returncode, r.stderr, out=r.stdout)
    assert tree(out) == before


def test_export_disk_full_and_read_only(pipeline_data, tmp_path):
    dest = tmp_path / "io_pairs"
    assert main(["pipeline", "export", f"pipeline.data_dir={pipeline_data}", "--output-dir", str(dest)]) == 0
    before = tree(dest)
    full = cli(
        "pipeline",
        "export",
        f"pipeline.data_dir={pipeline_data}",
        "--output-dir",
        str(dest),
        preexec_fn=file_size_limit(200),
    )
    last = assert_one_line_error(full.returncode, full.stderr, out=full.stdout)
    assert "disk is full" in last or "too large" in last, last
    assert tree(dest) == before and not list(dest.glob("*.tmp*")) and not list(dest.glob(".*"))
    with read_only(dest):
        ro = cli("pipeline", "export", f"pipeline.data_dir={pipeline_data}", "--output-dir", str(dest))
    assert_one_line_error(ro.returncode, ro.stderr, str(dest), out=ro.stdout)
    assert tree(dest) == before


def test_checkpointing_disk_full_and_read_only(tmp_path):
    data = {
        "train": make_pairs(tmp_path / "train.jsonl", 48, 0),
        "validation": make_pairs(tmp_path / "validation.jsonl", 8, 1),
    }
    out = tmp_path / "run"
    args = [
        "train",
        *TINY,
        f"data.train={data['train']}",
        f"data.validation={data['validation']}",
        f"train.output_dir={out}",
    ]
    assert main([*args, "train.max_iters=2"]) == 0  # a good checkpoint at step 2 (in this process: not under test)
    before = tree(out / "checkpoint_step_000002")
    # the model is ~1 MB: the next checkpoint cannot be written, the small files before it can
    full = cli(*args, preexec_fn=file_size_limit(200_000))
    last = assert_one_line_error(full.returncode, full.stderr, out=full.stdout)
    assert "checkpoint" in last and ("disk is full" in last or "too large" in last), last
    assert tree(out / "checkpoint_step_000002") == before
    assert [p.name for p in out.glob("checkpoint_step_*")] == ["checkpoint_step_000002"]
    assert not list(out.glob(".tmp-*"))
    with read_only(out):
        ro = cli(*args)
    assert_one_line_error(ro.returncode, ro.stderr, str(out), out=ro.stdout)
    assert tree(out / "checkpoint_step_000002") == before
    assert main(args) == 0  # with room again it resumes and finishes
    assert (out / "checkpoint_step_000004").is_dir()


def test_torchrun_output_dir_under_a_file(tmp_path):
    """`hybrid train` gave one line for an output folder under a regular file; under torchrun rank 0's
    NotADirectoryError was a traceback and rank 1 died of a gloo error. Now rank 0 prints the one line, once, and
    every rank exits 2. (torchrun itself still reports that its children failed, as it does for any non-zero exit.)"""
    import re
    import socket
    import sys
    from pathlib import Path

    from tests.reliability.conftest import ROOT

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    data = make_pairs(tmp_path / "train.jsonl", 16, 0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run_process(
        [
            str(Path(sys.executable).parent / "torchrun"),
            "--nproc_per_node=2",
            f"--master_port={port}",
            "-m",
            "hybrid.train",
            *TINY,
            f"data.train={data}",
            f"train.output_dir={blocker / 'run'}",
        ],
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and str(blocker) in errors[0], r.stderr[-3000:]
    assert not re.search(r'File "[^"]*/hybrid/', r.stderr), r.stderr[-3000:]  # no traceback of ours
    assert "NotADirectoryError" not in r.stderr and "gloo" not in r.stderr, r.stderr[-3000:]
    assert "exitcode  : 2" in r.stderr  # the rank that failed exited with the one-line error's code
    assert blocker.read_text() == "x"
