"""Synthetic long-context recall tasks as IO pairs (`{"input", "output"}` JSONL), issue #7.

Every task is written in space-separated words, each of which is one token for the benchmark's word-level
tokenizer (and for a byte-level BPE trained on the data: each word is its own pre-token). An example of length
`n` occupies exactly `n * segment_length` tokens, input and output together, so the output and the question
sit in the last segment and everything the question asks about lies in segments 0..n-2 when n > 1: a model
whose attention only ever sees the current segment has to guess (the task's `chance`).

Tasks
- `kv`: `n_pairs` key-value pairs (`b X`) scattered in filler, then `? b` -> `X`.
  Keys are lowercase letters, values one of 16 capital letters: chance 1/16.
- `passkey`: `the pass key is 6 8 4 3 2 .` hidden at a random depth of filler, then
  `what is the pass key ? the pass key is` -> `6 8 4 3 2`: chance 10**-5.
- `facts`: a two-hop fact chain in the style of BABILong qa2: `mary went to kitchen .`,
  `mary took the apple .` (and distractor facts) scattered in filler, then `where is the apple` -> `kitchen`:
  chance 1/8 (one of the places).

A fact never straddles two segments (the window is one segment, so a split fact could not be read whole in
any single window). Generators are pure functions of (task, n, seed, split): the same seed gives the same file.
Three splits never share a stream: `train`, `val` (where recipe choices are made; it is the stream the recipe
was first tuned on, when it was still called `test`) and `test` (scored once per run).

Beside uniform chance, `mentioned_chance` is the fair baseline of a model that found the right kind of answer but
not the right one: one of the values (key-value) or places (two-hop facts) the haystack mentions, picked at random.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hybrid.core.errors import HybridError

KEYS = list("abcdefghijklmnopqrstuvwxyz")
VALUES = list("ABCDEFGHIJKLMNOP")  # 16 values: chance 1/16
DIGITS = list("0123456789")
PASSKEY_DIGITS = 5
PEOPLE = ["mary", "john", "sandra", "daniel", "anna", "paul", "lisa", "tom"]
PLACES = ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "cellar", "garage"]
OBJECTS = ["apple", "ball", "book", "milk", "pen", "cup", "hat", "box"]
# Filler: words used by no task's facts or questions, so nothing in it can be mistaken for an answer.
FILLER = [
    "grass grows here .",
    "the sky stays high .",
    "the sun burns far away .",
    "water flows down .",
    "wind blows over hills .",
    "birds sing at dawn .",
    "old trees stand still .",
    "rain falls again .",
    "clouds drift by slowly .",
    "stars shine at night .",
]

TASKS = ("kv", "passkey", "facts")
CHANCE = {"kv": 1 / len(VALUES), "passkey": 10.0**-PASSKEY_DIGITS, "facts": 1 / len(PLACES)}
TASK_TITLES = {"kv": "key-value recall", "passkey": "passkey", "facts": "two-hop facts"}


def vocabulary() -> list[str]:
    """Every word any task can produce (the benchmark's fixed word-level vocabulary), in a stable order."""
    words: list[str] = ["?"]
    for group in (KEYS, VALUES, DIGITS, PEOPLE, PLACES, OBJECTS):
        words += group
    words += ["the", "pass", "key", "is", "what", "remember", "it", "went", "to", "took", "where", ",", "."]
    for sentence in FILLER:
        words += sentence.split()
    return list(dict.fromkeys(words))


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    task: str
    n: int  # length in segments

    def record(self) -> dict:
        return {"input": self.input, "output": self.output, "task": self.task, "segments": self.n}


def _filler(rng: random.Random, count: int) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        words += rng.choice(FILLER).split()
    return words[:count]


def _place(
    rng: random.Random, facts: list[list[str]], n: int, segment_length: int, tail: int, layout: Layout
) -> list[str]:
    """Lay `facts` (word lists) at random positions, none straddling a segment boundary, in the haystack
    (segments 0..n-2, or the space before the tail when n == 1), filler elsewhere; `tail` words are left free
    at the end for the question and the answer. `layout` counts the tokens the tokenizer adds around the
    words, so that segment boundaries fall where the model will put them."""
    total = n * segment_length - layout.prefix - layout.suffix  # words in input + output
    if n == 1:
        regions = [(0, total - tail)]
    else:
        regions = [
            (max(0, s * segment_length - layout.prefix), (s + 1) * segment_length - layout.prefix) for s in range(n - 1)
        ]
    need = sum(len(f) for f in facts)
    room = sum(b - a for a, b in regions)
    if need > room or (n > 1 and regions[-1][1] > total - tail):
        raise HybridError(
            f"recall task: {need} fact words do not fit {room} haystack words "
            f"(segment_length {segment_length} too small for this task)"
        )
    # Assign each fact to a region with enough space left, then spread facts inside each region at random gaps.
    for _ in range(1000):
        free = [b - a for a, b in regions]
        assignment: list[int] = []
        for fact in facts:
            options = [i for i, f in enumerate(free) if f >= len(fact)]
            if not options:
                break
            region = rng.choice(options)
            free[region] -= len(fact)
            assignment.append(region)
        else:
            break
    else:  # pragma: no cover - only with absurdly tight settings
        raise HybridError(f"recall task: could not lay out {len(facts)} facts in segment_length {segment_length}")
    words: list[str] = []
    for region, (a, b) in enumerate(regions):
        inside = [f for f, r in zip(facts, assignment) if r == region]
        gap_total = (b - a) - sum(len(f) for f in inside)
        cuts = sorted(rng.randint(0, gap_total) for _ in inside)
        gaps = [y - x for x, y in zip([0] + cuts, cuts + [gap_total])]
        for gap, fact in zip(gaps, inside):
            words += _filler(rng, gap) + fact
        words += _filler(rng, gaps[-1])
    words += _filler(rng, total - tail - len(words))  # the last segment: filler, then the question
    return words


@dataclass(frozen=True)
class Layout:
    """Tokens the tokenizer adds before the input (`prefix`, e.g. BOS) and around/after the output (`suffix`,
    e.g. a separator and EOS), so that an example of n segments is exactly n * segment_length tokens."""

    prefix: int = 0
    suffix: int = 0
    # Key-value and the chain aid: the output starts by repeating the question's key (`? b` -> `b X`). With the
    # IO-pair template the first output token is predicted at `<|sep|>`, not at the key, so without the echo the
    # lookup needs "the token before me" on the query side too - a 2-layer model stayed at "one of the values"
    # (0.20-0.24 in-window). With the echo the value is predicted at the key, as an induction head does.
    echo_key: bool = False


def kv_example(
    rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), n_pairs: int | tuple[int, int] = 8
) -> Example:
    if isinstance(n_pairs, tuple):  # a range (training ladder: fewer pairs are easier lookups)
        n_pairs = rng.randint(*n_pairs)
    keys = rng.sample(KEYS, n_pairs)
    values = [rng.choice(VALUES) for _ in keys]
    asked = rng.randrange(n_pairs)
    question = ["?", keys[asked]]
    answer = [keys[asked]] * layout.echo_key + [values[asked]]
    words = _place(
        rng, [[k, v] for k, v in zip(keys, values)], n, segment_length, tail=len(question) + len(answer), layout=layout
    )
    return Example(" ".join(words + question), " ".join(answer), "kv", n)


def passkey_example(rng: random.Random, n: int, segment_length: int, layout: Layout = Layout()) -> Example:
    digits = [rng.choice(DIGITS) for _ in range(PASSKEY_DIGITS)]
    fact = ["the", "pass", "key", "is"] + digits + ["."]
    question = ["what", "is", "the", "pass", "key", "?", "the", "pass", "key", "is"]
    words = _place(rng, [fact], n, segment_length, tail=len(question) + PASSKEY_DIGITS, layout=layout)
    return Example(" ".join(words + question), " ".join(digits), "passkey", n)


def facts_example(
    rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), n_people: int = 3, n_objects: int = 2
) -> Example:
    people = rng.sample(PEOPLE, n_people)
    places = rng.sample(PLACES, n_people)
    objects = rng.sample(OBJECTS, n_objects)
    holders = rng.sample(people, n_objects)
    facts = [[p, "went", "to", loc, "."] for p, loc in zip(people, places)]
    facts += [[h, "took", "the", o, "."] for h, o in zip(holders, objects)]
    rng.shuffle(facts)
    asked = rng.randrange(n_objects)
    # No trailing `?`: with the training template's 2 added tokens (`<|sep|>`, `<|endoftext|>`) the 1x example
    # (5 facts of 5 words, question, answer) then still fits one 32-token segment.
    question = ["where", "is", "the", objects[asked]]
    answer = places[people.index(holders[asked])]
    words = _place(rng, facts, n, segment_length, tail=len(question) + 1, layout=layout)
    return Example(" ".join(words + question), answer, "facts", n)


def chain_example(
    rng: random.Random,
    n: int,
    segment_length: int,
    layout: Layout = Layout(),
    links: tuple[int, int] = (1, 6),
    separator: float = 1.0,
) -> Example:
    """A training aid, not a benchmark task: links `x y ,` scattered in filler in random order, then `? x0` ->
    the chain `x1 x2 ... xm` that following the links from x0 gives. Every output token is one key-value lookup
    (the token after the earlier occurrence of the current one) at a random place, so, unlike the benchmark
    tasks, each example supervises the lookup circuit m times; with m = 1 it is the key-value task itself."""
    m = rng.randint(*links)
    chain = rng.sample(KEYS + VALUES, m + 1)
    # `separator`: the chance that a link ends with `,`; without it links can sit side by side as key-value pairs do.
    if separator >= 1.0:  # no draw: the stream of a separated chain does not depend on this option
        facts = [[a, b, ","] for a, b in zip(chain, chain[1:])]
    else:
        facts = [[a, b, ","] if rng.random() < separator else [a, b] for a, b in zip(chain, chain[1:])]
    rng.shuffle(facts)
    question = ["?", chain[0]]
    answer = chain[0:] if layout.echo_key else chain[1:]
    words = _place(rng, facts, n, segment_length, tail=len(question) + len(answer), layout=layout)
    return Example(" ".join(words + question), " ".join(answer), "chain", n)


GENERATORS: dict[str, Callable[..., Example]] = {
    "kv": kv_example,
    "passkey": passkey_example,
    "facts": facts_example,
    "chain": chain_example,
}
TRAINING_AIDS = ("chain",)


SPLITS = {"train": 1, "val": 2, "test": 3}


def task_seed(base_seed: int, task: str, n: int, split: str) -> int:
    """A stable seed per (task, length, split): train and test never share a stream."""
    if split not in SPLITS:
        raise HybridError(f"recall task: unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return (base_seed * 1_000_003 + list(GENERATORS).index(task) * 10_007 + n * 101 + SPLITS[split]) % 2**31


def generate(
    task: str,
    n: int,
    count: int,
    segment_length: int,
    seed: int,
    split: str = "train",
    layout: Layout = Layout(),
    **options,
) -> Iterator[Example]:
    """`count` examples of `task` at `n` segments; `options` go to the task's generator (e.g. n_pairs=(1, 8))."""
    if task not in GENERATORS:
        raise HybridError(f"recall task {task!r}: unknown (choose from {', '.join(TASKS)})")
    if n < 1:
        raise HybridError(f"recall task {task}: length must be at least 1 segment (got {n})")
    rng = random.Random(task_seed(seed, task, n, split))
    for _ in range(count):
        yield GENERATORS[task](rng, n, segment_length, layout, **options)


def n_tokens(example: Example) -> int:
    """Words of input and output together (one token each for the word-level tokenizer)."""
    return len(example.input.split()) + len(example.output.split())


def mentioned_chance(example: Example) -> float:
    """The chance of a model that answers with one of the candidates the input mentions, picked uniformly: one of
    the distinct values of the key-value pairs, one of the places of the facts; uniform chance for the passkey."""
    words = example.input.split()
    if example.task == "kv":
        values = {b for a, b in zip(words, words[1:]) if a in KEYS and b in VALUES}
        return 1 / max(1, len(values))
    if example.task == "facts":
        return 1 / max(1, len({w for w in words if w in PLACES}))
    return CHANCE.get(example.task, 0.0)
