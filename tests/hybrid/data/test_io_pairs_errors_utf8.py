"""Bad bytes in a data file are one line naming the file and line, or a counted skip."""

import pytest

from hybrid.core.errors import HybridError
from hybrid.data.io_pairs import data_files, read_io_pairs


def test_non_utf8_line_is_a_clear_error_or_a_counted_skip(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "\xff\xfe", "output": "c"}\n')
    with pytest.raises(HybridError, match=r"train\.jsonl:2: not UTF-8"):
        read_io_pairs(path)
    pairs = read_io_pairs(path, on_bad="skip")
    assert len(pairs.records) == 1


def test_a_folder_reads_only_jsonl_and_parquet(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (tmp_path / "stats.json").write_text('{"sizes": {}}\n')  # what `hybrid pipeline export` writes beside the splits
    assert data_files(tmp_path) == [str(tmp_path / "train.jsonl")]
