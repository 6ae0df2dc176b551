"""A HuggingFace base folder for the training tests: a tiny random `transformers` model and a tokenizer of its own
that lacks our special tokens (as real bases' do), so a run that used it can be told from one that trained a BPE."""

from __future__ import annotations

from tests.hybrid.models.model_helpers import hf_base

BASE_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "pack my box with five dozen liquor jugs",
    "sphinx of black quartz judge my vow",
] * 20


def base_tokenizer(vocab_size: int = 300):
    """A byte-level BPE trained on text unlike the IO pairs, with Llama-style `<s>` / `</s>` and none of ours."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(BASE_TEXT, trainer=trainer)
    return tokenizer


def make_base(folder, kind: str = "llama", **kw):
    """`folder` with config.json + model.safetensors (`kind`, vocabulary = the tokenizer's) + tokenizer.json.
    Returns the `tokenizers.Tokenizer`."""
    tokenizer = base_tokenizer()
    hf_base(folder, kind, vocab_size=tokenizer.get_vocab_size(), **kw)
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer
