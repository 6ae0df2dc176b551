"""The word-level tokenizer (train.tokenizer=word): one whitespace-separated word = one token."""

from __future__ import annotations

import json

from hybrid.data.encode import encode_pairs
from hybrid.data.tokenizer import EOS, SEP, SPECIAL_TOKENS, UNK, TextTokenizer, train_bpe, train_word_level

TEXTS = ["k17: 4821 k3: 99 filler filler", "what is k17: ?", f"a{SEP}b  c\nd{EOS}"]


def test_one_word_is_one_token_and_specials_stay_whole(tmp_path):
    tok = train_word_level(TEXTS)
    words = {w for t in TEXTS for w in t.replace(SEP, " ").replace(EOS, " ").split()}
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 1 + len(words)
    assert [tok.tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS) + 1)] == [*SPECIAL_TOKENS, UNK]
    assert tok.eos_id == 0 and tok.sep_id == 1
    text = "k17: 4821 what  is\tk3: ?"
    ids = tok.encode(text)
    assert len(ids) == len(text.split()) and UNK not in [tok.tokenizer.id_to_token(i) for i in ids]
    assert tok.decode(ids) == " ".join(text.split())
    # special tokens inside a text are single tokens even without spaces; unseen words are <|unk|>
    assert tok.encode(f"a{SEP}zebra") == [tok.tokenizer.token_to_id("a"), tok.sep_id, tok.tokenizer.token_to_id(UNK)]
    # saved and loaded like the BPE one
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode(text) == ids and again.vocab_size == tok.vocab_size
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
    # same texts → same ids (a function of the data, not of set order)
    assert train_word_level(list(TEXTS)).tokenizer.get_vocab() == tok.tokenizer.get_vocab()


def test_word_level_token_counts_are_word_counts():
    records = [{"input": "k1: 5 k2: 7 filler k1: ?", "output": "5"}, {"input": "x y", "output": "k2: 7"}]
    tok = train_word_level(t for r in records for t in (r["input"], r["output"]))
    enc = encode_pairs(tok, records, max_length=64)
    for r, ids, p in zip(records, enc.input_ids, enc.prompt_lengths):
        assert p == len(r["input"].split()) + 1  # + the separator
        assert len(ids) - p == len(r["output"].split()) + 1  # + end-of-text
    bpe = train_bpe((t for r in records for t in (r["input"], r["output"])), 300)
    assert len(bpe.encode(records[0]["input"])) != len(records[0]["input"].split())  # what word-level is for
