"""The storage interface (hybrid/core/storage.py): one contract for a local folder and a pyarrow file system — the
latter here as a `file://` URI, a real pyarrow file system on this disk (the S3 one, moto's server, is exercised by
tests/hybrid/training/test_storage_s3.py)."""

from __future__ import annotations

import os

import pytest

from hybrid.core import storage
from hybrid.core.errors import HybridError


@pytest.fixture(params=["local", "uri"])
def root(request, tmp_path):
    """A folder to work in, as a local path or as a file:// URI of the same folder."""
    (tmp_path / "area").mkdir()
    return str(tmp_path / "area") if request.param == "local" else (tmp_path / "area").as_uri()


def test_the_kind_is_chosen_from_the_path(tmp_path):
    assert isinstance(storage.at(tmp_path), storage.LocalStorage)
    assert isinstance(storage.at("relative/folder"), storage.LocalStorage)
    assert isinstance(storage.at("s3://bucket/x"), storage.ArrowStorage)
    assert isinstance(storage.at(tmp_path.as_uri()), storage.ArrowStorage)
    assert storage.is_absolute("s3://b/x") and storage.is_absolute("/x") and storage.is_absolute("~/x")
    assert not storage.is_absolute("x/y")


def test_files_folders_and_pointers_behave_alike(root, tmp_path):
    where = storage.at(root)
    run = where.join(root, "run")
    where.write_text(where.join(run, "metrics.jsonl"), "a\n")
    where.write_bytes(where.join(run, "ckpt_1", "w.bin"), b"\x00\x01")
    assert where.read_text(where.join(run, "metrics.jsonl")) == "a\n"
    assert where.exists(run) and where.is_dir(run) and not where.is_dir(where.join(run, "metrics.jsonl"))
    assert sorted(where.list_dir(run)) == [("ckpt_1", True), ("metrics.jsonl", False)]
    assert where.list_dir(where.join(root, "nothing")) == []
    assert where.base_name(where.join(run, "ckpt_1")) == "ckpt_1"
    assert [where.base_name(f) for f in where.files_under(run)] == ["w.bin", "metrics.jsonl"] or sorted(
        where.base_name(f) for f in where.files_under(run)
    ) == ["metrics.jsonl", "w.bin"]
    assert [where.base_name(f) for f in where.glob(where.join(run, "*.jsonl"))] == ["metrics.jsonl"]
    with where.open_input(where.join(run, "ckpt_1", "w.bin")) as f:
        assert f.read() == b"\x00\x01"
    assert where.read_pointer(run, "best") is None
    where.set_pointer(run, "best", "ckpt_1")
    assert where.read_pointer(run, "best") == "ckpt_1"
    where.remove_dir(where.join(run, "ckpt_1"))
    assert not where.exists(where.join(run, "ckpt_1"))
    where.remove_dir(where.join(run, "ckpt_1"))  # gone already: nothing to do


def test_publishing_a_work_folder(root, tmp_path, monkeypatch):
    """A run writes into `work_dir` and publishes: locally that is the folder itself (nothing copied, nothing
    rewritten); on a URI, a staging folder in the cache, uploaded with the named file last and fetched back."""
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "cache"))
    where = storage.at(root)
    out = where.join(root, "out")
    work = where.work_dir(out)
    assert work.is_relative_to(tmp_path / "cache") == where.stages
    (work / "ck").mkdir(parents=True)
    (work / "ck" / "a.txt").write_text("a")
    (work / "ck" / "state.json").write_text("{}")
    before = os.stat(work / "ck" / "a.txt").st_mtime_ns
    where.put_dir(work / "ck", where.join(out, "ck"), last="state.json")
    where.put_file(work / "ck" / "a.txt", where.join(out, "a.txt"))
    assert where.read_text(where.join(out, "ck", "state.json")) == "{}"
    assert where.read_text(where.join(out, "a.txt")) == "a"
    got = where.get_dir(where.join(out, "ck"), tmp_path / "fetched")
    assert (got / "a.txt").read_text() == "a"
    if not where.stages:  # the same folder: untouched
        assert os.stat(work / "ck" / "a.txt").st_mtime_ns == before and got == work / "ck"


def test_local_writes_stay_atomic_and_pointers_are_symlinks(tmp_path):
    where = storage.at(tmp_path)
    where.write_text(tmp_path / "f.txt", "one")
    where.write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two" and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "checkpoint_step_000001").mkdir()
    where.set_pointer(tmp_path, "best", "checkpoint_step_000001")
    assert os.readlink(tmp_path / "best") == "checkpoint_step_000001"  # relative: the folder can move


def test_uri_errors_are_one_line_without_credentials():
    with pytest.raises(HybridError, match=r"^nosuch://.*bucket/x.*: cannot open") as e:
        storage.read_text("nosuch://user:secret@bucket/x?token=t")
    assert "secret" not in str(e.value) and "token=t" not in str(e.value) and len(str(e.value).splitlines()) == 1
    shown = storage.shown("s3://key:secret@bucket/x?endpoint_override=h")
    assert "secret" not in shown and shown.startswith("s3://") and "bucket/x" in shown


def test_the_same_calls_on_s3(s3_server, tmp_path):
    """moto's S3 server on 127.0.0.1: files, listing, pointers, a published folder with its last file, the data
    files of a prefix and of a glob (hybrid.data.io_pairs), and a fetched folder."""
    from hybrid.data.io_pairs import data_files

    root = f"s3://{s3_server.bucket()}/area"
    where = storage.at(root)
    assert where.stages and not where.exists(root)
    for name in ("a.jsonl", "sub/b.parquet", "notes.txt", ".hidden.jsonl"):
        where.write_text(where.join(root, "data", name), "{}\n")
    assert [where.base_name(f) for f in data_files(where.join(root, "data"))] == ["a.jsonl", "b.parquet"]
    assert [where.base_name(f) for f in data_files(where.join(root, "data", "*.jsonl"))] == ["a.jsonl"]
    with pytest.raises(HybridError, match="no file matches"):
        data_files(where.join(root, "data", "*.csv"))
    (tmp_path / "ck").mkdir()
    for name in ("w.bin", "state.json", "z.txt"):
        (tmp_path / "ck" / name).write_text(name)
    where.put_dir(tmp_path / "ck", where.join(root, "run", "ck"), last="state.json")
    assert sorted(where.list_dir(where.join(root, "run"))) == [("ck", True)]
    where.set_pointer(where.join(root, "run"), "best", "ck")
    assert where.read_pointer(where.join(root, "run"), "best") == "ck"
    got = where.get_dir(where.join(root, "run", "ck"), tmp_path / "back")
    assert sorted(p.name for p in got.iterdir()) == ["state.json", "w.bin", "z.txt"]
    where.remove_dir(where.join(root, "run", "ck"))
    assert not where.exists(where.join(root, "run", "ck", "w.bin"))
