"""`pipeline.data_dir=s3://…` (issue #26 item 1) on the tests' S3 server (moto on 127.0.0.1): `repos add` keeps the
clone as one archive that each machine unpacks into its cache, `pipeline run`'s structural stages and dedup write
every commit folder through the store (done marker last; resume skips done commits), the LLM stages plan on a local
copy of what they read and upload what they write, `pipeline export`, `check-ast-coverage` and `cleanup-dataset` read
from it — and every file is byte for byte what the same commands write into a local folder. A registered stage that
does not say it works there refuses a URI in one line, before anything is written."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

from hybrid.core import storage
from hybrid.core.errors import HybridError
from hybrid.core.layout import AST, COMMIT_DATA, DIFF_AST, FIM, DatasetLayout, current_run, run_scope
from hybrid.main import main
from tests.repo_builder import RepoBuilder, build_sample_repo

STAGES = "--stages=generate-ast,generate-ast-diffs,dedup,generate-fim"
VOLATILE = ("stats.json",)  # each stage's finish time and the worker processes' ids


def _store_files(root: str) -> dict[str, bytes]:
    where = storage.at(root)
    return {rel: where.open_input(where.join(root, rel)).read() for rel in where.relative_files(root)}


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same(local: dict[str, bytes], stored: dict[str, bytes]) -> None:
    keep = [k for k in local if not k.endswith(VOLATILE)]
    assert sorted(keep) == sorted(k for k in stored if not k.endswith(VOLATILE))
    assert [k for k in keep if local[k] != stored[k]] == []


def _registered_on_s3(s3_server, tmp_path, text: str, message: str) -> tuple[RepoBuilder, str, DatasetLayout]:
    """A one-file repository at tmp_path/src, registered (`repos add`) with its data on a fresh bucket."""
    rb = RepoBuilder(tmp_path / "src")
    rb.write("a.py", text)
    rb.commit(message)
    remote = f"s3://{s3_server.bucket()}/data"
    assert main(["repos", "add", str(tmp_path / "src"), f"pipeline.data_dir={remote}"]) == 0
    return rb, remote, DatasetLayout(remote)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """This machine's cache (unpacked clones, staging folders) in the test's folder."""
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def llm(tmp_path, monkeypatch):
    """The loopback chat-completions server as the configured LLM; the overrides that ask it from this process."""
    from hybrid.bench.chat_server import ChatServer

    monkeypatch.chdir(tmp_path)  # (no .env)
    with ChatServer(api_key="sk-test-objstore", models=("m",)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-objstore")
        monkeypatch.setenv("LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("LLM_MODEL_NAME", "m")
        server.overrides = ["llm.runner=local", "llm.requests_per_minute=60000", "llm.tokens_per_minute=100000000"]
        yield server


def test_every_stage_export_and_housekeeping_on_s3_are_byte_identical_and_resume(
    s3_server, tmp_path, cache, llm, capsys
):
    """`pipeline run` with its default stages (generate-tasks and generate-reasoning asking the loopback chat server),
    export, check-ast-coverage and cleanup-dataset, into a local folder and into the bucket (in this process)."""
    build_sample_repo(tmp_path / "src")
    bucket = s3_server.bucket()
    local, remote = tmp_path / "data", f"s3://{bucket}/data"
    coverage = []
    for data, out in ((local, tmp_path / "io"), (remote, f"s3://{bucket}/io")):
        at = f"pipeline.data_dir={data}"
        assert main(["repos", "add", str(tmp_path / "src"), "--name", "sample", at]) == 0
        logged = Path(s3_server.log.name).read_text().count("\n")
        assert main(["pipeline", "run", "--local", "--no-progress", at, *llm.overrides]) == 0
        requests = Path(s3_server.log.name).read_text().splitlines()[logged:]
        assert main(["pipeline", "export", at, "--output-dir", str(out)]) == 0
        assert main(["pipeline", "check-ast-coverage", at, "--json", str(tmp_path / "coverage.json")]) == 0
        coverage.append(json.loads((tmp_path / "coverage.json").read_text()))
    assert f"-> s3://{bucket}/data/repos/sample.tar" in capsys.readouterr().out
    # every commit file a stage read had been written in the same run: read from this machine's copy, not fetched
    assert [r for r in requests if "PUT /" in r and "/commit_" in r]
    assert [r for r in requests if f"GET /{bucket}/" in r and "/commit_" in r] == []
    # and the driver listed the repository's files 4 times, not 5: generate-ast's plan, reused by dedup (with what the
    # ranges uploaded); generate-tasks' and generate-reasoning's local copies; generate-fim's plan (after them)
    listed = [r for r in requests if "?list-type=2&max-keys=1000&prefix=data/ast_dataset/sample/ " in r]
    assert len(listed) == 4, "\n".join(listed)
    stored = _store_files(f"{remote}/ast_dataset")
    _same(_local_files(local / "ast_dataset"), stored)
    assert json.loads(stored["sample/commit_0/task.json"])["source"] == "llm"
    assert any(k.endswith("/reasoning.json") for k in stored)
    _same(_local_files(tmp_path / "io"), _store_files(f"s3://{bucket}/io"))
    assert coverage[0] == coverage[1] and coverage[0]["sample"]
    assert not any((cache / "staging").iterdir())  # every staging folder and local copy removed
    assert [p for p in (cache / "written").iterdir() if not p.name.endswith(".removed")] == []  # the run's copies
    assert main(["repos", "list", "--json", f"pipeline.data_dir={remote}"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["sample"]

    # a run killed mid-upload: commit 5's ast.jsonl is there, its done marker is not -> only commit 5 is redone
    lay = DatasetLayout(remote)
    storage.remove_file(lay.commit_file("sample", 5, COMMIT_DATA))
    storage.remove_file(lay.commit_file("sample", 6, FIM))
    asked, rerun = len(llm.chat_requests()), tmp_path / "rerun.json"
    args = ["pipeline", "run", "--local", "--no-progress", f"pipeline.data_dir={remote}", "--json", str(rerun)]
    assert main([*args, *llm.overrides]) == 0
    stages = json.loads(rerun.read_text())["stages"]
    assert stages["generate-ast"]["counts"] == {**stages["generate-ast"]["counts"], "commits": 1, "skipped_done": 7}
    assert stages["generate-fim"]["counts"]["commits"] == 1  # commit 6 (commit 5 kept its fim_dataset.json)
    assert len(llm.chat_requests()) == asked  # the LLM stages' outputs are all there: nothing asked again
    _same(_local_files(local / "ast_dataset"), _store_files(f"{remote}/ast_dataset"))

    removed = []
    for data in (local, remote):
        capsys.readouterr()
        assert main(["pipeline", "cleanup-dataset", "--tasks", "--reasoning", f"pipeline.data_dir={data}"]) == 0
        removed.append(capsys.readouterr().out)
    assert removed[0] == removed[1] and "task.json" in removed[0]
    _same(_local_files(local / "ast_dataset"), _store_files(f"{remote}/ast_dataset"))
    assert not any(k.endswith(("/task.json", "/reasoning.json")) for k in _store_files(f"{remote}/ast_dataset"))


@pytest.mark.slow
def test_on_ray_each_worker_fetches_its_clone_and_writes_through_the_store(ray_session, s3_server, tmp_path, cache):
    """The same commands with Ray Data workers (2 workers, ranges of 3 commits): each worker unpacks the clone
    archive into its own machine's cache and uploads its commit folders; outputs equal the local folder's."""
    build_sample_repo(tmp_path / "src")
    bucket = s3_server.bucket()
    local, remote = tmp_path / "data", f"s3://{bucket}/data"
    on_ray = ["pipeline.num_workers=2", "pipeline.commits_per_task=3", "--json", str(tmp_path / "ray.json")]
    for data, out, how in ((local, tmp_path / "io", ["--local"]), (remote, f"s3://{bucket}/io", on_ray)):
        assert main(["repos", "add", str(tmp_path / "src"), "--name", "sample", f"pipeline.data_dir={data}"]) == 0
        assert main(["pipeline", "run", STAGES, "--no-progress", f"pipeline.data_dir={data}", *how]) == 0
        assert main(["pipeline", "export", f"pipeline.data_dir={data}", "--output-dir", str(out)]) == 0
    _same(_local_files(local / "ast_dataset"), _store_files(f"{remote}/ast_dataset"))
    _same(_local_files(tmp_path / "io"), _store_files(f"s3://{bucket}/io"))
    stats = json.loads(storage.read_text(DatasetLayout(remote).stats_file("sample")))
    assert stats["generate-ast"]["counts"]["commits"] == 8
    assert os.getpid() not in json.loads((tmp_path / "ray.json").read_text())["processes"]["sample"]  # Ray workers


def test_a_second_machine_unpacks_the_clone_and_update_publishes_a_new_one(s3_server, tmp_path, cache, monkeypatch):
    rb, remote, lay = _registered_on_s3(s3_server, tmp_path, "def f():\n    return 1\n", "add f")
    first = lay.clone_cache("src", storage.at(remote).stat(lay.clone_archive("src")))
    assert (first / "HEAD").is_file()  # the adding machine keeps its clone as the archive's unpacked copy
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "other-machine"))
    rb.write("a.py", "def f():\n    return 2\n")
    rb.commit("change f")
    assert main(["repos", "update", f"pipeline.data_dir={remote}"]) == 0
    assert main(["pipeline", "run", STAGES, "--local", "--no-progress", f"pipeline.data_dir={remote}"]) == 0
    assert lay.commits("src") == [0, 1]
    assert json.loads(storage.read_text(lay.commit_file("src", 1, COMMIT_DATA)))["message"] == "change f\n"
    clones = [p for p in (tmp_path / "other-machine" / "clones").iterdir() if p.is_dir()]
    assert clones == [lay.clone_cache("src", storage.at(remote).stat(lay.clone_archive("src"))).parent]  # the new one
    assert main(["repos", "remove", "src", "--dataset", f"pipeline.data_dir={remote}"]) == 0
    assert storage.at(remote).relative_files(remote) == ["repos/registry.json"]


def test_a_registered_stage_that_needs_a_folder_is_refused_on_a_uri_in_one_line(
    s3_server, tmp_path, cache, capsys, monkeypatch
):
    from pipelines import run as pipeline_run

    monkeypatch.setattr(pipeline_run, "STAGES", list(pipeline_run.STAGES))
    pipeline_run.register_stage(pipeline_run.Stage("my-stage", run=lambda *a: {}))
    build_sample_repo(tmp_path / "src")
    remote = f"s3://{s3_server.bucket()}/data"
    assert main(["repos", "add", str(tmp_path / "src"), "--name", "sample", f"pipeline.data_dir={remote}"]) == 0
    before = _store_files(remote)
    capsys.readouterr()
    assert main(["pipeline", "run", "--local", f"pipeline.data_dir={remote}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and remote in err, err
    assert "my-stage need a local data folder" in err
    assert _store_files(remote) == before


def test_storage_lists_stats_fetches_and_uploads_in_order(s3_server, tmp_path):
    root = f"s3://{s3_server.bucket()}/area"
    for where, base in ((storage.at(root), root), (storage.at(tmp_path), str(tmp_path / "area"))):
        assert where.relative_files(base) == [] and where.stat(where.join(base, "x")) is None
        (tmp_path / "src").mkdir(exist_ok=True)
        files = []
        for i, name in enumerate(("b.txt", "a.txt", "last.txt")):
            (tmp_path / "src" / name).write_text(name * (i + 1))
            files.append((tmp_path / "src" / name, where.join(base, "c", name)))
        done = []
        with storage.Uploads() as uploads:
            uploads.submit(files, then=functools.partial(done.append, 1))
        assert done == [1]
        assert where.relative_files(base) == ["c/a.txt", "c/b.txt", "c/last.txt"]
        assert where.stat(where.join(base, "c", "a.txt"))[0] == 10
        stamps = [where.stat(dest)[1] for _, dest in files]
        assert stamps == sorted(stamps)  # one after the other, in order
        got = tmp_path / "got" / where.__class__.__name__
        where.get_files([(where.join(base, "c", n), got / n) for n in ("a.txt", "last.txt")])
        assert (got / "last.txt").read_text() == "last.txt" * 3
        with pytest.raises(Exception, match="no such file"):
            where.get_files([(where.join(base, "c", "missing"), got / "m")])
    # the file system made once per bucket gives the same paths as pyarrow's own parse of each URI
    import pyarrow.fs as pafs

    for uri in (f"{root}/x/y.json", f"{root}/dir/", root):
        assert storage.at(root).filesystem(uri)[1] == pafs.FileSystem.from_uri(uri)[1]


def test_layout_on_a_uri_lists_commits_and_applies_the_done_rule(s3_server):
    root = f"s3://{s3_server.bucket()}/data"
    lay = DatasetLayout(root)
    assert lay.staged and not DatasetLayout("data").staged
    for n, names in ((0, (AST, COMMIT_DATA, DIFF_AST)), (1, (AST,)), (12, (COMMIT_DATA,))):
        for name in names:
            storage.write_text(lay.commit_file("r", n, name), "x")
    storage.write_text(lay.stats_file("r"), "{}")
    listing = lay.listing("r")
    assert sorted(listing) == [0, 1, 12] and listing[0] == {AST, COMMIT_DATA, DIFF_AST}
    assert lay.done_from(listing[0], "generate-ast-diffs") and lay.done_from(listing[0], "generate-ast")
    assert not lay.done_from(listing[1], "generate-ast") and not lay.done_from(listing[12], "generate-ast")
    assert lay.commits("r") == [0, 1, 12]
    with pytest.raises(Exception, match=r"^pipeline\.data_dir=s3://.*: this command needs a local data folder"):
        lay.local_commit_dir("r", 0)


def test_a_run_keeps_what_it_uploaded_on_this_machine_and_removes_it_after(s3_server, tmp_path, cache):
    lay = DatasetLayout(f"s3://{s3_server.bucket()}/data")
    stale = cache / "written" / "an-old-run"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))  # a run that ended long ago on this machine (its driver was elsewhere)
    with run_scope() as run:
        assert current_run() == run
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / AST).write_text("uploaded")
        storage.write_text(lay.commit_file("r", 3, AST), "uploaded")
        lay.keep_written("r", 3, [tmp_path / "out" / AST], run)
        storage.remove_file(lay.commit_file("r", 3, AST))  # so only this machine's copy can answer
        workspace, own = lay.workspace("r", run)
        lay.fetch_commit_files("r", {3: [AST]}, workspace)  # (no request: it is there)
        assert not own and (workspace / "commit_3" / AST).read_text() == "uploaded"
        assert lay.read_commit_text("r", 3, AST, run) == "uploaded"
        assert not stale.exists()
        with pytest.raises(HybridError, match="no such file"):  # outside the run: from the store
            lay.fetch_commit_files("r", {3: [AST]}, tmp_path / "other")
    assert current_run() == "" and not (cache / "written" / run).exists()  # (renamed away, removed in the background)


def test_an_older_clone_of_a_repository_is_removed_from_the_cache_once_no_process_uses_it(s3_server, tmp_path, cache):
    """`repos update` publishes a new archive: this machine's folder of the old one goes once nothing holds it (a
    range holds its clone with `clone_in_use`; here this process does, through its own open lock file)."""
    from pipelines.repos import clone_in_use, local_clone

    rb, remote, lay = _registered_on_s3(s3_server, tmp_path, "x = 1\n", "one")
    with clone_in_use(lay, "src") as old:
        rb.write("a.py", "x = 2\n")
        rb.commit("two")
        assert main(["repos", "update", f"pipeline.data_dir={remote}"]) == 0
        new = local_clone(lay, "src")
        assert new != old and (new / "HEAD").is_file() and (old / "HEAD").is_file()  # the old one is in use
    assert local_clone(lay, "src") == new
    assert [p for p in (cache / "clones").iterdir() if p.is_dir()] == [new.parent]  # the old one removed
    assert sorted(p.name for p in (cache / "clones").iterdir() if not p.is_dir()) == [new.parent.name + ".lock"]
