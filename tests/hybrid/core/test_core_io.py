"""atomic_write: exact bytes, no temp file left behind, the old file kept when a write fails."""

from __future__ import annotations

import os
import stat

import pytest

from hybrid.core.io import atomic_path, atomic_write, atomic_write_json, atomic_write_jsonl


def test_text_bytes_and_pieces_are_written_exactly(tmp_path):
    atomic_write(tmp_path / "a.txt", "héllo\nwörld\n", fsync=False)
    atomic_write(tmp_path / "b.bin", b"\x00\xff\n")
    atomic_write(tmp_path / "sub/c.txt", iter(["one\n", "two\n"]), mkdir=True)
    assert (tmp_path / "a.txt").read_bytes() == "héllo\nwörld\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff\n"
    assert (tmp_path / "sub/c.txt").read_bytes() == b"one\ntwo\n"
    assert atomic_write_jsonl(tmp_path / "d.jsonl", [{"a": "é"}, {"b": None}], fsync=False) == 2
    assert (tmp_path / "d.jsonl").read_text(encoding="utf-8") == '{"a": "é"}\n{"b": null}\n'
    atomic_write_json(tmp_path / "e.json", {"k": [1, 2]}, indent=None)
    assert (tmp_path / "e.json").read_text() == '{"k": [1, 2]}\n'
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o600  # as tempfile.mkstemp made them
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "x.json"
    atomic_write(target, "old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "bad \udcc3 surrogate\n")
    assert target.read_text() == "old\n"
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n" and not list(tmp_path.glob(".*.tmp"))


def test_many_writes_to_one_file_leave_the_last(tmp_path):
    for i in range(200):
        atomic_write(tmp_path / "f.txt", f"{i}\n", fsync=False, mkdir=False)
    assert (tmp_path / "f.txt").read_text() == "199\n"
    assert os.listdir(tmp_path) == ["f.txt"]
