"""Training from a local HuggingFace checkpoint folder: its own tokenizer.json is used and saved."""

from __future__ import annotations

import json

import pytest

from hybrid.cli.config import load_config
from hybrid.data.io_pairs import read_io_pairs
from hybrid.data.tokenizer import TextTokenizer, train_bpe
from hybrid.training.train import train

transformers = pytest.importorskip("transformers")


def hf_llama(folder, vocab_size):
    import torch

    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)


def test_train_from_a_pretrained_base_uses_its_tokenizer(io_data, tmp_path, tiny_overrides):
    base = tmp_path / "base"
    hf_llama(base, vocab_size=400)
    records = read_io_pairs(io_data["train"]).records
    tok = train_bpe((t for r in records for t in (r["input"], r["output"])), vocab_size=320)
    tok.save(base)
    res = train(
        load_config(
            tiny_overrides(
                io_data,
                tmp_path / "o",
                f"model.pretrained={base}",
                "train.max_iters=2",
                "train.eval_every=2",
                "data.max_length=32",
            )
        ).recipe(),
        quiet=True,
    )
    saved = TextTokenizer.load(res.checkpoint)
    assert saved.tokenizer.to_str() == TextTokenizer.load(base).tokenizer.to_str()

    assert json.loads((res.checkpoint / "config.json").read_text())["vocab_size"] == 400


def test_a_tokenizer_bigger_than_the_base_grows_its_embeddings(io_data, tmp_path, tiny_overrides):
    """A real base (GPT-2: 50257 ids, Llama: 32000) has no room for our special tokens: the embeddings grow,
    the base's rows are kept and the new rows start at the mean embedding."""
    from safetensors.torch import load_file

    base = tmp_path / "base"
    hf_llama(base, vocab_size=100)
    records = read_io_pairs(io_data["train"]).records
    train_bpe((t for r in records for t in (r["input"], r["output"])), vocab_size=400).save(base)
    n_tokens = TextTokenizer.load(base).vocab_size
    assert n_tokens > 100
    res = train(
        load_config(
            tiny_overrides(
                io_data, tmp_path / "o", f"model.pretrained={base}", "train.max_iters=1", "train.learning_rate=1e-30"
            )
        ).recipe(),
        quiet=True,
    )
    assert json.loads((res.checkpoint / "config.json").read_text())["vocab_size"] == n_tokens
    emb = load_file(str(res.checkpoint / "model.safetensors"))["model.embed_tokens.weight"]
    base_emb = load_file(str(base / "model.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape[0] == n_tokens
    assert (emb[:100] - base_emb).abs().max() < 1e-6
    assert (emb[100:] - base_emb.mean(0)).abs().max() < 1e-6


def test_a_run_on_a_base_keeps_its_vocabulary_and_appends_our_special_tokens(io_data, tmp_path, tiny_overrides):
    """Issue 29: with model.pretrained=PATH, training, eval and generate use the folder's tokenizer — every token
    of the base keeps its id, our special tokens come after them, the embedding grows by exactly that many — not a
    BPE trained on the data (which would put our special tokens first and learn other merges)."""
    from hybrid.data.tokenizer import SPECIAL_TOKENS
    from hybrid.training.evaluate import generate_texts, load
    from tests.hybrid.training.hf_base_folder import make_base

    base = tmp_path / "base"
    base_tok = make_base(base)
    n_base = base_tok.get_vocab_size()
    res = train(
        load_config(
            tiny_overrides(
                io_data,
                tmp_path / "o",
                f"model.pretrained={base}",
                "train.max_iters=2",
                "train.eval_every=2",
                "data.max_length=32",
            )
        ).recipe(),
        quiet=True,
    )
    for folder in (res.output_dir, res.checkpoint):  # the run's tokenizer, and the checkpoint's
        vocab = TextTokenizer.load(folder).tokenizer.get_vocab(with_added_tokens=True)
        assert {t: vocab[t] for t in base_tok.get_vocab()} == base_tok.get_vocab()
        assert sorted(vocab[t] for t in SPECIAL_TOKENS) == list(range(n_base, n_base + len(SPECIAL_TOKENS)))
    assert json.loads((res.checkpoint / "config.json").read_text())["vocab_size"] == n_base + len(SPECIAL_TOKENS)
    ck = load(res.checkpoint, device="cpu")  # what `hybrid eval` and `hybrid generate` load
    assert ck.tokenizer.to_json() == TextTokenizer.load(res.checkpoint).to_json()
    assert ck.tokenizer.encode("the quick brown fox") == base_tok.encode("the quick brown fox").ids
    assert len(generate_texts(ck, ["alpha beta"], max_new_tokens=3)) == 1
