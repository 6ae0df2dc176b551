"""pipelines/filters.py: the minified test finds long lines in characters, not bytes, without splitting."""

from __future__ import annotations

import random

from hybrid.config.pipeline import PipelineConfig
from pipelines.filters import _has_long_line, content_drop_reason


def test_long_lines_are_counted_in_characters():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(["a", "é", "中", "\n", "\r", "😀"]) * rng.randint(0, 40) for _ in range(6))
        limit = rng.randint(0, 60)
        assert _has_long_line(text.encode(), limit) == (max(map(len, text.split("\n"))) > limit), (text, limit)


def test_minified_by_longest_or_mean_line():
    cfg = PipelineConfig(max_line_chars=20, max_mean_line_chars=10)
    assert content_drop_reason("a.py", b"x = 1\n" * 5, cfg) is None
    assert content_drop_reason("a.py", b"x = 1\n" + b"y" * 21 + b"\n" + b"z\n" * 10, cfg) == "minified"
    assert content_drop_reason("a.py", "é".encode() * 20 + b"\n" + b"z\n" * 10, cfg) is None  # 40 bytes, 20 chars
    assert content_drop_reason("a.py", b"abcdefghij" * 2 + b"\nabcdefghij\n", cfg) == "minified"  # mean 10.7
