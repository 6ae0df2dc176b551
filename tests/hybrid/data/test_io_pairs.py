import json

import pytest

from hybrid.core.errors import HybridError
from hybrid.data.encode import IGNORE_INDEX, collate, encode_pairs, fit_to_length
from hybrid.data.io_pairs import read_io_pairs
from hybrid.data.tokenizer import EOS, FIM_MIDDLE, SEP, TextTokenizer, train_bpe


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_jsonl_parquet_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write(
        tmp_path / "a.jsonl",
        [json.dumps({"input": "x", "output": "y", "repo": "r"}), "", json.dumps({"input": "", "output": "z"})],
    )
    pq.write_table(pa.table({"input": ["p"], "output": ["q"]}), tmp_path / "b.parquet")
    pairs = read_io_pairs(tmp_path)
    assert [r["output"] for r in pairs.records] == ["y", "z", "q"]
    assert len(read_io_pairs(tmp_path / "b.parquet")) == 1


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"input": "a", "output": "b"}', "{not json"], r"bad\.jsonl:2: not valid JSON"),
        (['{"input": "a"}'], r"bad\.jsonl:1: record has no 'output'"),
        (['{"input": "a", "output": 3}'], r"bad\.jsonl:1: 'output' must be a string"),
        (['["a", "b"]'], r"bad\.jsonl:1: expected a JSON object"),
        ([], r"bad\.jsonl: empty file"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, lines, message):
    write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(HybridError, match=message):
        read_io_pairs(tmp_path / "bad.jsonl")


def test_missing_path_and_skip_mode(tmp_path):
    with pytest.raises(HybridError, match=r"nope\.jsonl: no such file"):
        read_io_pairs(tmp_path / "nope.jsonl")
    write(tmp_path / "mixed.jsonl", ['{"input": "a", "output": "b"}', "{oops", '{"input": "a"}'])
    pairs = read_io_pairs(tmp_path / "mixed.jsonl", on_bad="skip")
    assert len(pairs) == 1 and pairs.skipped == {"not_json": 1, "bad_record": 1}


def test_bpe_tokenizer_roundtrip_and_special_tokens(tmp_path):
    tok = train_bpe(["def add(a, b):\n    return a + b\n"] * 20 + ["héllo wörld ✓"], vocab_size=300)
    text = f"def f():{FIM_MIDDLE}  return 1 ✓"
    ids = tok.encode(text)
    assert tok.tokenizer.token_to_id(FIM_MIDDLE) in ids  # special tokens are single ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode(text) == ids and again.eos_id == tok.tokenizer.token_to_id(EOS)
    assert again.sep_id == tok.tokenizer.token_to_id(SEP)


def test_left_truncation_keeps_output_and_is_counted():
    ids, prompt_len, why = fit_to_length(list(range(10, 30)), [1, 2, 3], sep_id=5, eos_id=0, max_length=10)
    assert ids[-4:] == [1, 2, 3, 0] and ids[prompt_len - 1] == 5 and len(ids) == 10
    assert ids[: prompt_len - 1] == list(range(24, 30))[-(prompt_len - 1) :]  # the input's right end survives
    assert why == "input_truncated_left"
    ids, prompt_len, why = fit_to_length([7], list(range(100, 120)), sep_id=5, eos_id=0, max_length=8)
    assert len(ids) == 8 and why == "output_truncated" and ids[:2] == [7, 5]


def test_encode_and_collate_label_only_the_output():
    tok = train_bpe(["aaa bbb ccc ddd"] * 10, vocab_size=300)
    records = [{"input": "aaa bbb", "output": "ccc"}, {"input": "aaa " * 50, "output": "ddd ccc"}]
    enc = encode_pairs(tok, records, max_length=16)
    assert enc.counts["input_truncated_left"] == 1 and enc.counts["examples"] == 2
    input_ids, labels, mask = collate(list(zip(enc.input_ids, enc.prompt_lengths)), tok.pad_id)
    assert input_ids.shape == labels.shape == mask.shape == (2, 16)
    for row in range(2):
        p, n = enc.prompt_lengths[row], len(enc.input_ids[row])
        assert (labels[row, :p] == IGNORE_INDEX).all() and (labels[row, n:] == IGNORE_INDEX).all()
        assert labels[row, p:n].tolist() == enc.input_ids[row][p:]
        assert labels[row, n - 1] == tok.eos_id and input_ids[row, p - 1] == tok.sep_id
        assert mask[row].sum() == n
    assert tok.decode(labels[0, enc.prompt_lengths[0] : len(enc.input_ids[0])].tolist()) == "ccc"
