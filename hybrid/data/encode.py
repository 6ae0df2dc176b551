"""IO pairs → token ids → padded batches whose labels cover the output only.

One example is `input <|sep|> output <|endoftext|>`. The model reads all of it segment by segment (the input
phase fills the memories, the output phase reads them); the labels are -100 (ignored) on the input and the
separator, so the loss is cross-entropy on the output's tokens and the closing end-of-text only. An example longer
than `max_length` loses tokens from the left of its input — never dropped — and is counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid.data.tokenizer import TextTokenizer

IGNORE_INDEX = -100  # HuggingFace / torch cross_entropy convention


@dataclass
class Encoded:
    """Token ids of each example and how many of them are the prompt (input + separator)."""

    input_ids: list[list[int]]
    prompt_lengths: list[int]
    counts: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.input_ids)

    def output_tokens(self) -> int:
        return sum(len(ids) - p for ids, p in zip(self.input_ids, self.prompt_lengths))


def fit_to_length(
    input_ids: list[int], output_ids: list[int], sep_id: int, eos_id: int, max_length: int
) -> tuple[list[int], int, str | None]:
    """(ids, prompt length, what was truncated or None). Keeps at least the separator and one input token; a
    too-long output keeps its beginning."""
    output = output_ids + [eos_id]
    room_for_output = max_length - 2
    truncated = None
    if len(output) > room_for_output:
        output = output[:room_for_output]
        truncated = "output_truncated"
    room_for_input = max_length - 1 - len(output)
    if len(input_ids) > room_for_input:
        input_ids = input_ids[len(input_ids) - room_for_input :]
        truncated = truncated or "input_truncated_left"
    prompt = input_ids + [sep_id]
    return prompt + output, len(prompt), truncated


def _clip_chars(tokenizer: TextTokenizer, max_length: int) -> int:
    """Characters of a text that can still reach `max_length` tokens: a token covers at most `max_token_chars`
    characters, plus a margin for the word the cut falls in (tokenized differently than in the whole text)."""
    return (max_length + 8) * tokenizer.max_token_chars + 256


def encode_clipped(
    tokenizer: TextTokenizer, texts: Sequence[str], max_length: int, keep: str = "end"
) -> list[list[int]]:
    """Token ids of each text where only its last (`keep="end"`) or first (`keep="start"`) `max_length` tokens
    matter — the same ids as tokenizing the whole text and cutting, without tokenizing megabytes that are cut
    anyway (a 10 MB line cost ~2 GB). A clipped text that gives too few tokens (a tokenizer that maps a long run
    of characters to one token) is tokenized again with twice the characters, up to the whole text."""
    limit = _clip_chars(tokenizer, max_length)
    want = max_length + 8

    def clip(text: str, chars: int) -> str:
        return text if len(text) <= chars else (text[-chars:] if keep == "end" else text[:chars])

    def cut(ids: list[int]) -> list[int]:
        return ids[-want:] if keep == "end" else ids[:want]

    out = [cut(ids) for ids in tokenizer.encode_batch([clip(t, limit) for t in texts])]
    for i, text in enumerate(texts):
        chars = limit
        while len(text) > chars and len(out[i]) < want:  # rare: too few tokens in the clipped part
            chars *= 2
            out[i] = cut(tokenizer.encode(clip(text, chars)))
    return out


def encode_record(
    tokenizer: TextTokenizer, record: dict[str, Any], max_length: int
) -> tuple[list[int], int, str | None]:
    """(ids, prompt length, what was truncated or None) of one IO pair: `input <|sep|> output <|endoftext|>`."""
    (inp,) = encode_clipped(tokenizer, [record["input"]], max_length, keep="end")
    (out,) = encode_clipped(tokenizer, [record["output"]], max_length, keep="start")
    return fit_to_length(inp, out, tokenizer.sep_id, tokenizer.eos_id, max_length)


def encode_pairs(tokenizer: TextTokenizer, records: Sequence[dict[str, Any]], max_length: int) -> Encoded:
    inputs = encode_clipped(tokenizer, [r["input"] for r in records], max_length, keep="end")
    outputs = encode_clipped(tokenizer, [r["output"] for r in records], max_length, keep="start")
    encoded = Encoded(input_ids=[], prompt_lengths=[])
    for inp, out in zip(inputs, outputs):
        ids, prompt_len, truncated = fit_to_length(inp, out, tokenizer.sep_id, tokenizer.eos_id, max_length)
        encoded.input_ids.append(ids)
        encoded.prompt_lengths.append(prompt_len)
        encoded.counts["examples"] += 1
        if truncated:
            encoded.counts[truncated] += 1
    return encoded


def encode_prompt(tokenizer: TextTokenizer, text: str, max_length: int, room: int) -> list[int]:
    """The prompt for generation: input + separator, left-truncated to leave `room` tokens for the output."""
    (ids,) = encode_clipped(tokenizer, [text], max_length, keep="end")
    keep = max(1, max_length - room - 1)
    return ids[-keep:] + [tokenizer.sep_id]


def collate(examples: Sequence[tuple[Sequence[int], int]], pad_id: int, length: int | None = None):
    """Right-padded (input_ids, labels, attention_mask) tensors of shape (B, T); T = the longest row, or `length`.

    Padding goes on the right: in a causal model with memory written only from earlier segments, trailing pads
    never influence a real token, so a row's loss does not depend on what it is batched with."""
    import torch

    T = max(max(len(ids) for ids, _ in examples), length or 0)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(examples):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
        labels[row, prompt_len:n] = input_ids[row, prompt_len:n]
        attention_mask[row, :n] = 1
    return input_ids, labels, attention_mask
