"""The tokenizer: the pretrained base's own `tokenizer.json` when there is one, else a byte-level BPE trained on
the training data with the `tokenizers` library. Either way it carries the special tokens the IO-pair template
uses (end of text, input/output separator, fill-in-the-middle markers) and is saved with every checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from hybrid.core.errors import HybridError

EOS = "<|endoftext|>"  # end of an output; also the padding token
SEP = "<|sep|>"  # ends the input: the output starts after it
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
TASK = "<|task|>"
SPECIAL_TOKENS = (EOS, SEP, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, TASK)
TOKENIZER_FILE = "tokenizer.json"


def write_tokenizer_config(folder: Path) -> None:
    """The HuggingFace-style tokenizer_config.json naming our special tokens (beside tokenizer.json)."""
    (Path(folder) / "tokenizer_config.json").write_text(
        json.dumps(
            {"eos_token": EOS, "pad_token": EOS, "sep_token": SEP, "additional_special_tokens": list(SPECIAL_TOKENS)},
            indent=2,
        )
        + "\n"
    )


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the special tokens the training code needs."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        missing = [t for t in (EOS, SEP) if tokenizer.token_to_id(t) is None]
        if missing:
            raise HybridError(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self.eos_id = tokenizer.token_to_id(EOS)
        self.sep_id = tokenizer.token_to_id(SEP)
        self.pad_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def max_token_chars(self) -> int:
        """The most characters one token of the vocabulary covers (computed once): `encode.py` clips a text to
        what can still matter before tokenizing it."""
        cached = getattr(self, "_max_token_chars", None)
        if cached is None:
            vocab = self.tokenizer.get_vocab(with_added_tokens=False)
            cached = max([len(self.tokenizer.decode([i], skip_special_tokens=False)) for i in vocab.values()] or [1])
            self._max_token_chars = cached = max(1, cached)
        return cached

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        write_tokenizer_config(folder)

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        """The tokenizer a `tokenizer.json` text describes (what a run hands its workers)."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def load(cls, folder: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise HybridError(f"{path}: no such file (a checkpoint holds its tokenizer)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:
            raise HybridError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0]})") from None
        return cls(tokenizer)


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> TextTokenizer:
    """A byte-level BPE (GPT-2 style: any byte sequence encodes, nothing is unknown) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tokenizer)


UNK = "<|unk|>"  # the word-level tokenizer's unknown word


def train_word_level(texts: Iterable[str]) -> TextTokenizer:
    """One token per whitespace-separated word: a `tokenizers` WordLevel model over every word of `texts` (no
    frequency cut-off), the special tokens above and `<|unk|>` for words it has not seen. For synthetic tasks
    where "n words = n tokens" must hold; decoding joins words with single spaces."""
    from collections import Counter

    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    split = pre_tokenizers.WhitespaceSplit()
    specials = [*SPECIAL_TOKENS, UNK]
    counts: Counter = Counter()
    for text in texts:
        for special in SPECIAL_TOKENS:  # they stay whole tokens, never words of the vocabulary
            text = text.replace(special, " ")
        counts.update(word for word, _ in split.pre_tokenize_str(text))
    # ids: the special tokens first (as in the BPE), then the words, most frequent first (ties alphabetical)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = split
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return TextTokenizer(tokenizer)


def pretrained_tokenizer(folder: str | Path) -> TextTokenizer:
    """The base checkpoint's tokenizer with our special tokens added (as new ids after its vocabulary)."""
    from tokenizers import AddedToken, Tokenizer

    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise HybridError(f"{path}: no such file (model.pretrained must hold tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    )
    return TextTokenizer(tokenizer)
