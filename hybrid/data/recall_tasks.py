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

Opt-in tasks (`--tasks`; not in the default run, whose committed results they would change):
- RULER-style (arXiv 2404.06654), in the same word format:
  `multikey`: needle-in-a-haystack with two-word keys: the real pair `a b X` and 3 distractor needles whose key
  differs from the real key in exactly one word (`a c Y`, `d b Z`), then `? a b` -> `a b X`: chance 1/16.
  `multivalue`: 4 values of one key (`k X`, ..., `k W`) and 2 pairs of other keys, then `? k` -> `k X ... W`
  (every value, in the order the haystack states them).
  `vt` (variable tracking): a chain of 2-4 hops `p = X`, `q = p`, `r = q` and a 1-hop distractor chain of another
  value, statements in program order, then `? X` -> `X p q r` (every variable that holds X, in assignment order).
- BABILong-like (arXiv 2406.10149) bAbI qa1-qa3 from a small simulator of agents moving among places:
  `qa1` (single supporting fact) `where is mary` -> her last place; `qa2` (two) `where is the apple` -> its holder's
  last place; `qa3` (three) `where was the apple before the office` -> the place the apple was in before. Events are
  in temporal order; chance 1/8 (one of the places).

Scoring beside exact match: `ruler_score` (RULER's string_match_all: the fraction of the reference strings
`references` present in the output) and, for qa1-qa3, `label_set_correct` (BABILong's compare_answers).

A fact never straddles two segments (the window is one segment, so a split fact could not be read whole in
any single window). Generators are pure functions of (task, n, seed, split): the same seed gives the same file.
Three splits never share a stream: `train`, `val` (where recipe choices are made; it is the stream the recipe
was first tuned on, when it was still called `test`) and `test` (scored once per run).

Beside uniform chance, `mentioned_chance` is the fair baseline of a model that found the right kind of answer but
not the right one: one of the values (key-value) or places (two-hop facts) the haystack mentions, picked at random.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

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

TASKS = ("kv", "passkey", "facts")  # the default run's
RULER_TASKS = ("multikey", "multivalue", "vt")
BABILONG_TASKS = ("qa1", "qa2", "qa3")
ALL_TASKS = TASKS + RULER_TASKS + BABILONG_TASKS
MULTIKEY_DISTRACTORS = 3  # RULER niah_multikey_1 hides 4 needles, one of them the asked one
MULTIVALUE_VALUES = 4  # RULER niah_multivalue: 4 values of the asked key
VT_HOPS = (2, 4)
CHANCE = {
    "kv": 1 / len(VALUES),
    "passkey": 10.0**-PASSKEY_DIGITS,
    "facts": 1 / len(PLACES),
    "multikey": 1 / len(VALUES),
    # every value in order: 4 distinct values of 16
    "multivalue": 1 / (16 * 15 * 14 * 13),
    # the shortest chain (2 hops: 3 distinct variables of 26, in order); longer ones are rarer still
    "vt": 1 / (26 * 25 * 24),
    "qa1": 1 / len(PLACES),
    "qa2": 1 / len(PLACES),
    "qa3": 1 / len(PLACES),
}


def chance(task: str, support: bool = False) -> float:
    """CHANCE of `task`; two-hop facts with their support (`support`) name a holder and a place, and a uniform guess
    of both is right 1 / (people x places) of the time."""
    if task == "facts" and support:
        return 1 / (len(PEOPLE) * len(PLACES))
    return CHANCE[task]


TASK_TITLES = {
    "kv": "key-value recall",
    "passkey": "passkey",
    "facts": "two-hop facts",
    "multikey": "multi-key needle",
    "multivalue": "multi-value needle",
    "vt": "variable tracking",
    "qa1": "qa1 single fact",
    "qa2": "qa2 two facts",
    "qa3": "qa3 three facts",
}
# Output words that repeat the question (with Layout(echo_key=True)): free, not scored as the value.
ECHO = {"kv": 1, "chain": 1, "multikey": 2, "multivalue": 1, "vt": 1, "pair_chain": 2}


def echo_words(example: Example) -> int:
    """How many leading output words repeat the question (free): ECHO's count, and the object two-hop facts echo
    with their support (facts_example(echo=True))."""
    if example.task == "facts":
        return int(example.output.split()[0] in OBJECTS)
    return ECHO.get(example.task, 0)


# Words only the opt-in tasks use: the default run's vocabulary (and so its stage-1 data) stays what it was.
EXTRA_WORDS = {"vt": ["="], "qa3": ["was", "before"]}


def vocabulary(tasks: Sequence[str] = TASKS) -> list[str]:
    """Every word `tasks` (and the training aids) can produce - the benchmark's fixed word-level vocabulary - in a
    stable order; the default tasks' list is the one the committed run used."""
    words: list[str] = ["?"]
    for group in (KEYS, VALUES, DIGITS, PEOPLE, PLACES, OBJECTS):
        words += group
    words += ["the", "pass", "key", "is", "what", "remember", "it", "went", "to", "took", "where", ",", "."]
    for sentence in FILLER:
        words += sentence.split()
    for task in tasks:
        words += EXTRA_WORDS.get(task, [])
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
    rng: random.Random,
    facts: list[list[str]],
    n: int,
    segment_length: int,
    tail: int,
    layout: Layout,
    ordered: bool = False,
) -> list[str]:
    """Lay `facts` (word lists) at random positions, none straddling a segment boundary, in the haystack
    (segments 0..n-2, or the space before the tail when n == 1), filler elsewhere; `tail` words are left free
    at the end for the question and the answer. `layout` counts the tokens the tokenizer adds around the
    words, so that segment boundaries fall where the model will put them. `ordered`: the facts keep their order
    (a program's statements, a story's events); they must then all have the same length."""
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
    if ordered:  # the same number of facts per region (equal lengths: the same space), regions in order
        if len({len(f) for f in facts}) > 1:
            raise HybridError("recall task: ordered facts must all have the same length")
        assignment.sort()
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
    rng: random.Random,
    n: int,
    segment_length: int,
    layout: Layout = Layout(),
    n_people: int = 3,
    n_objects: int = 2,
    support: bool = False,
    echo: bool = False,
) -> Example:
    """`support`: the answer names the fact it rests on first, `where is apple` -> `mary kitchen` (the holder, then
    the holder's place), so each answer word is one lookup; exact match then needs both hops right. The question
    drops `the` so that the 1x example still fits one segment. `echo` (with `support`): the answer starts with the
    asked object, `where apple` -> `apple mary kitchen`, so that each answer word is predicted at the word it is looked
    up from (the holder at the object, as key-value's echoed key; the place at the holder); the question drops `is`
    to keep the 1x example in one segment. The draws are the same as without either."""
    if echo and not support:
        raise HybridError("facts: echo needs support (the echoed object is what the holder is looked up from)")
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
    if echo:
        question = ["where", objects[asked]]
    else:
        question = ["where", "is", objects[asked]] if support else ["where", "is", "the", objects[asked]]
    answer = [objects[asked]] * echo + [holders[asked]] * support + [places[people.index(holders[asked])]]
    words = _place(rng, facts, n, segment_length, tail=len(question) + len(answer), layout=layout)
    return Example(" ".join(words + question), " ".join(answer), "facts", n)


def chain_example(
    rng: random.Random,
    n: int,
    segment_length: int,
    layout: Layout = Layout(),
    links: tuple[int, int] = (1, 6),
    separator: float = 1.0,
    digits: bool = False,
) -> Example:
    """A training aid, not a benchmark task: links `x y ,` scattered in filler in random order, then `? x0` ->
    the chain `x1 x2 ... xm` that following the links from x0 gives. Every output token is one key-value lookup
    (the token after the earlier occurrence of the current one) at a random place, so, unlike the benchmark
    tasks, each example supervises the lookup circuit m times; with m = 1 it is the key-value task itself."""
    m = rng.randint(*links)
    # `digits`: the passkey's digits may be links too (the lookup trained on the tokens the passkey asks for)
    chain = rng.sample(KEYS + VALUES + DIGITS * digits, m + 1)
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


def pair_chain_example(
    rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), links: tuple[int, int] = (1, 3)
) -> Example:
    """A training aid for the multi-key needle: the chain aid with keys of two words. Links `a b c` (no separator,
    as the needles have none) scattered in filler, each with a distractor link whose key shares one of its two
    words (the first and the second in turn), then `? t0 t1` -> `t0 t1 t2 ... t(m+1)`: every output token after the
    echoed key is the word that follows the two before it somewhere in the haystack — a lookup on a two-word key
    that neither word alone answers, m times per example."""
    m = rng.randint(*links)
    words_ = KEYS + VALUES
    chain = rng.sample(words_, m + 2)
    facts = [chain[i : i + 3] for i in range(m)]
    keys = {tuple(f[:2]) for f in facts}
    for i, (a, b, c) in enumerate(list(facts)):
        keep = i % 2  # keep the first word, then the second, ...
        while True:
            other = rng.choice([w for w in words_ if w not in (a, b)])
            key = (a, other) if keep == 0 else (other, b)
            if key not in keys:
                break
        keys.add(key)
        facts.append([*key, rng.choice([w for w in words_ if w != c])])
    rng.shuffle(facts)
    question = ["?", *chain[:2]]
    answer = chain if layout.echo_key else chain[2:]
    words = _place(rng, facts, n, segment_length, tail=len(question) + len(answer), layout=layout)
    return Example(" ".join(words + question), " ".join(answer), "pair_chain", n)


# -- RULER-style tasks (opt-in) ---------------------------------------------------------------------------------------
def multikey_example(
    rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), distractors: int = MULTIKEY_DISTRACTORS
) -> Example:
    """RULER's multi-key needle with keys of two words: every distractor key differs from the asked one in exactly
    one word (the first or the second, both kinds present), so only the whole key identifies the needle."""
    key = rng.sample(KEYS, 2)
    keys = [key]
    for i in range(distractors):
        word = i % 2  # first and second word in turn, so matching either word alone is not enough
        while True:
            other = list(key)
            other[word] = rng.choice([k for k in KEYS if k != key[word]])
            if other not in keys:
                break
        keys.append(other)
    values = rng.sample(VALUES, len(keys))  # distinct: a distractor's value is never the answer
    needles = [k + [v] for k, v in zip(keys, values)]
    rng.shuffle(needles)
    question = ["?"] + key
    answer = key * layout.echo_key + [values[0]]
    words = _place(rng, needles, n, segment_length, tail=len(question) + len(answer), layout=layout)
    return Example(" ".join(words + question), " ".join(answer), "multikey", n)


def multivalue_example(
    rng: random.Random,
    n: int,
    segment_length: int,
    layout: Layout = Layout(),
    n_values: int = MULTIVALUE_VALUES,
    others: int = 2,
) -> Example:
    """RULER's multi-value needle: `n_values` pairs of the asked key (distinct values) and `others` pairs of other
    keys; the answer is every value of the asked key, in the order the haystack states them."""
    keys = rng.sample(KEYS, 1 + others)
    pairs = [[keys[0], v] for v in rng.sample(VALUES, n_values)]
    pairs += [[k, rng.choice(VALUES)] for k in keys[1:]]
    rng.shuffle(pairs)
    question = ["?", keys[0]]
    answer = [keys[0]] * layout.echo_key + [v for k, v in pairs if k == keys[0]]
    words = _place(rng, pairs, n, segment_length, tail=len(question) + len(answer), layout=layout, ordered=True)
    return Example(" ".join(words + question), " ".join(answer), "multivalue", n)


def vt_example(
    rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), hops: tuple[int, int] = VT_HOPS
) -> Example:
    """RULER's variable tracking: `p = X`, then `q = p`, `r = q`, ... (2-4 hops), and a 1-hop chain of another value
    (`s = Y`, `t = s`) interleaved with it, statements in program order; `? X` -> every variable holding X."""
    h = rng.randint(*hops)
    names = rng.sample(KEYS, h + 3)
    value, other = rng.sample(VALUES, 2)
    chain, decoy = names[: h + 1], names[h + 1 :]
    statements = [[[chain[0], "=", value]] + [[b, "=", a] for a, b in zip(chain, chain[1:])]]
    statements.append([[decoy[0], "=", other], [decoy[1], "=", decoy[0]]])
    # a random interleaving that keeps each chain's own order (a variable is assigned before it is read)
    order = [0] * len(statements[0]) + [1] * len(statements[1])
    rng.shuffle(order)
    program = [statements[c].pop(0) for c in order]
    question = ["?", value]
    answer = [value] * layout.echo_key + chain
    words = _place(rng, program, n, segment_length, tail=len(question) + len(answer), layout=layout, ordered=True)
    return Example(" ".join(words + question), " ".join(answer), "vt", n)


# -- BABILong-like qa1-qa3 (opt-in): a tiny simulator of agents moving among places -----------------------------------
@dataclass
class _World:
    """Events in temporal order and what they imply: where each person is, and where each object has been."""

    events: list[list[str]] = field(default_factory=list)
    at: dict[str, str] = field(default_factory=dict)  # person -> place
    holder: dict[str, str] = field(default_factory=dict)  # object -> person
    trail: dict[str, list[str]] = field(default_factory=dict)  # object -> the places it has been, in order
    fresh: bool = False  # every move goes to a place nobody has gone to yet

    def move(self, rng: random.Random, person: str) -> None:
        been = {p for o, h in self.holder.items() if h == person for p in self.trail[o]}
        if self.fresh:
            been |= {e[3] for e in self.events if e[1] == "went"}
        # a new place for the person (and for what it carries: an object never returns to a place it has been,
        # so "before the <place>" names one moment)
        place = rng.choice([p for p in PLACES if p != self.at.get(person) and p not in been])
        self.at[person] = place
        for o, h in self.holder.items():
            if h == person:
                self.trail[o].append(place)
        self.events.append([person, "went", "to", place, "."])

    def take(self, person: str, obj: str) -> None:
        self.holder[obj] = person
        self.trail[obj] = [self.at[person]]
        self.events.append([person, "took", "the", obj, "."])


def _story(
    rng: random.Random, moves: int, taker_moves: tuple[int, int], people: int = 3, fresh: bool = False
) -> tuple[_World, str, str]:
    """A world of `moves` moves by `people` people and one `took` by one of them, who moves `taker_moves[0]` times
    before it and at least `taker_moves[1]` times after (`fresh`: every move to a new place); returns the world,
    the taker and the object."""
    cast = rng.sample(PEOPLE, people)
    taker, obj = cast[0], rng.choice(OBJECTS)
    free = moves - sum(taker_moves)
    who = [taker] * taker_moves[0] + ["take"] + [taker] * taker_moves[1]
    for _ in range(free):  # the other moves go anywhere, by anyone (before its first move a person is nowhere)
        who.insert(rng.randint(0, len(who)), rng.choice(cast))
    world = _World(fresh=fresh)
    for w in who:
        if w == "take":
            world.take(taker, obj)  # the taker has moved at least once: it is somewhere
        else:
            world.move(rng, w)
    return world, taker, obj


def qa1_example(rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), moves: int = 5) -> Example:
    """bAbI qa1 (single supporting fact): people move around; `where is mary` -> the last place she went to."""
    cast = rng.sample(PEOPLE, 3)
    world = _World()
    for _ in range(moves):
        world.move(rng, rng.choice(cast))
    asked = rng.choice(sorted(world.at))
    question = ["where", "is", asked]
    words = _place(rng, world.events, n, segment_length, tail=len(question) + 1, layout=layout, ordered=True)
    return Example(" ".join(words + question), world.at[asked], "qa1", n)


def qa2_example(rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), moves: int = 4) -> Example:
    """bAbI qa2 (two supporting facts): someone takes an object and moves on; `where is the apple` -> the last place
    of the one who took it."""
    world, taker, obj = _story(rng, moves, (1, 0))
    question = ["where", "is", "the", obj]
    words = _place(rng, world.events, n, segment_length, tail=len(question) + 1, layout=layout, ordered=True)
    return Example(" ".join(words + question), world.at[taker], "qa2", n)


def qa3_example(rng: random.Random, n: int, segment_length: int, layout: Layout = Layout(), moves: int = 3) -> Example:
    """bAbI qa3 (three supporting facts): an object is taken and carried to at least one other place; `where was the
    apple before the office` -> the place it was in before it came to the office."""
    # Fresh places: with the 4 events a 1x example has room for, a place two events share would leave a single
    # candidate besides the question's place; every place new keeps it at two (the "mentioned" level 1/2).
    world, _, obj = _story(rng, moves, (1, 1), fresh=True)
    trail = world.trail[obj]
    i = rng.randrange(1, len(trail))
    question = ["where", "was", "the", obj, "before", "the", trail[i]]
    words = _place(rng, world.events, n, segment_length, tail=len(question) + 1, layout=layout, ordered=True)
    return Example(" ".join(words + question), trail[i - 1], "qa3", n)


GENERATORS: dict[str, Callable[..., Example]] = {
    "kv": kv_example,
    "passkey": passkey_example,
    "facts": facts_example,
    "chain": chain_example,
    # after the original four: task_seed numbers tasks by their place here, so the old streams stay as they were
    "multikey": multikey_example,
    "multivalue": multivalue_example,
    "vt": vt_example,
    "qa1": qa1_example,
    "qa2": qa2_example,
    "qa3": qa3_example,
    "pair_chain": pair_chain_example,
}
TRAINING_AIDS = ("chain", "pair_chain")


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


def question_words(example: Example) -> list[str]:
    """The question at the end of the input: from its last `where` / `what` on (facts, stories, passkey), else from
    its last `?` (the key-value kinds); no fact or filler uses those words."""
    words = example.input.split()
    starts = [i for i, w in enumerate(words) if w in ("where", "what")] or [i for i, w in enumerate(words) if w == "?"]
    return words[starts[-1] :] if starts else []


def mentioned_chance(example: Example) -> float:
    """The chance of a model that answers with one of the candidates the input mentions, picked uniformly: one of
    the distinct values of the key-value pairs (and of the multi-key needles), one of the places of the facts and
    stories (not one the question names: that is never the answer), the values of one of the mentioned keys
    (multi-value), the chain of one of the mentioned values (variable tracking); uniform chance for the passkey."""
    words = example.input.split()
    if example.task in ("kv", "multikey"):
        values = {b for a, b in zip(words, words[1:]) if a in KEYS and b in VALUES}
        return 1 / max(1, len(values))
    if example.task == "multivalue":
        return 1 / max(1, len({a for a, b in zip(words, words[1:]) if a in KEYS and b in VALUES}))
    if example.task == "vt":
        return 1 / max(1, len({w for w in words if w in VALUES}))
    if example.task == "facts" and len(example.output.split()) - echo_words(example) == 2:  # with its support:
        return 1 / max(1, len({a for a, b in zip(words, words[1:]) if a in PEOPLE and b == "took"}))
    if example.task == "facts" or example.task in BABILONG_TASKS:
        asked = set(question_words(example))
        return 1 / max(1, len({w for w in words if w in PLACES} - asked))
    return CHANCE.get(example.task, 0.0)


# -- scoring beside exact match ----------------------------------------------------------------------------------------
def references(example: Example, echoed: bool = True) -> list[str]:
    """RULER's reference strings of an example: the passkey as one string, else each answer word (the value, every
    value of multi-value, every variable of variable tracking, the place); `echoed`: the output starts with the
    question's key (Layout(echo_key=True)), which is not a reference."""
    words = example.output.split()[echo_words(example) if echoed else 0 :]
    return [" ".join(words)] if example.task == "passkey" else words


def _contains(words: Sequence[str], part: Sequence[str]) -> bool:
    k = len(part)
    return any(list(words[i : i + k]) == list(part) for i in range(len(words) - k + 1))


def ruler_score(output: Sequence[str], refs: Sequence[str]) -> float:
    """RULER's string_match_all for one example: the fraction of `refs` present in the output, case-insensitive.
    Present means the reference's words appear in a row among the output's words (RULER tests substrings of the
    text; with one token per word a substring test would let the variable `a` match inside `garden`)."""
    out = [w.lower() for w in output]
    return sum(_contains(out, r.lower().split()) for r in refs) / max(1, len(refs))


def label_set_correct(
    output: Sequence[str], target: str, question: Sequence[str], labels: Sequence[str] = PLACES
) -> bool:
    """BABILong's compare_answers: the output's first sentence (up to `.`) must name the target and no other label
    of the task's label set, labels the question names not counted (they are never the answer)."""
    out = [w.lower() for w in output]
    out = out[: out.index(".")] if "." in out else out
    in_question = {w.lower() for w in question} & {lab.lower() for lab in labels}
    named = {lab.lower() for lab in labels if lab.lower() in out} - in_question
    return named == {target.lower()}
