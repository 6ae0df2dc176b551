"""The opt-in recall tasks (issue #28): RULER-style multi-key needle, multi-value needle and variable tracking, the
BABILong-like qa1-qa3 simulator, and the scorers RULER and BABILong define. The default tasks' tests live in
tests/hybrid/bench/test_recall.py. Each answer here is re-derived from the example's own words by a small reader
written for the test, so a generator that states one thing and answers another fails."""

from __future__ import annotations

import json

import pytest

from hybrid.data import recall_tasks as rt

L = 32
NEW = rt.RULER_TASKS + rt.BABILONG_TASKS
ECHO = rt.Layout(suffix=2, echo_key=True)  # the recipe's layout (hybrid/training/recall.py: layout)


def examples(task: str, n: int, count: int = 40, seed: int = 0, split: str = "test") -> list[rt.Example]:
    return list(rt.generate(task, n, count, L, seed, split, ECHO))


@pytest.mark.parametrize("task", NEW)
def test_examples_fill_exactly_n_segments_with_their_own_words(task):
    for n in (1, 4, 16):
        for layout, length in ((ECHO, L), (rt.Layout(prefix=1, suffix=2), 40)):
            for ex in rt.generate(task, n, 30, length, seed=3, layout=layout):
                assert rt.n_tokens(ex) + layout.prefix + layout.suffix == n * length
                assert set((ex.input + " " + ex.output).split()) <= set(rt.vocabulary([task]))


def test_the_default_vocabulary_and_streams_are_unchanged():
    """New tasks come after the old ones in GENERATORS (task_seed numbers tasks by place) and add words only when
    asked for: the committed run's data, vocabulary and streams stay what they were."""
    assert list(rt.GENERATORS)[:4] == ["kv", "passkey", "facts", "chain"]
    assert rt.vocabulary() == rt.vocabulary(rt.TASKS) and len(rt.vocabulary()) == 125  # docs/recall.md
    assert not set(rt.vocabulary(rt.ALL_TASKS)[125:]) & set(rt.vocabulary())


@pytest.mark.parametrize("task", NEW)
def test_generators_are_seeded_and_streams_disjoint(task):
    def records(seed, split):
        return [json.dumps(e.record()) for e in examples(task, 4, 60, seed, split)]

    assert records(1, "val") == records(1, "val")
    assert records(1, "val") != records(2, "val")
    streams = {split: set(records(1, split)) for split in rt.SPLITS}
    assert not streams["train"] & streams["val"] and not streams["train"] & streams["test"]
    assert not streams["val"] & streams["test"]


@pytest.mark.parametrize("task", NEW)
@pytest.mark.parametrize("n", [2, 4, 16])
def test_the_answer_lies_beyond_the_window(task, n):
    """At n > 1 every reference word sits in segments 0..n-2 and never in the question's window (the last
    segment), so a model that sees only the window cannot read it there."""
    for ex in examples(task, n):
        words = ex.input.split()
        window, haystack = words[(n - 1) * L :], words[: (n - 1) * L]
        for ref in rt.references(ex):
            assert all(w in haystack for w in ref.split()), (ex, ref)
            assert not any(w in window for w in ref.split()), (ex, ref)


def _needles(words: list[str]) -> list[tuple[tuple[str, str], str]]:
    return [
        ((a, b), c) for a, b, c in zip(words, words[1:], words[2:]) if a in rt.KEYS and b in rt.KEYS and c in rt.VALUES
    ]


def test_multikey_distractor_keys_differ_from_the_asked_key_by_one_word():
    for n in (1, 4):
        for ex in examples("multikey", n):
            words = ex.input.split()
            asked = tuple(words[-2:])
            needles = _needles(words)
            assert len(needles) == 1 + rt.MULTIKEY_DISTRACTORS
            [value] = [v for k, v in needles if k == asked]  # exactly one needle has the asked key
            assert ex.output.split() == [*asked, value] and rt.references(ex) == [value]
            distractors = [k for k, _ in needles if k != asked]
            assert all(sum(a != b for a, b in zip(k, asked)) == 1 for k in distractors)
            assert {0, 1} == {0 if k[0] != asked[0] else 1 for k in distractors}  # both words vary
            assert len({v for _, v in needles}) == len(needles)  # a distractor's value is never the answer


def test_multivalue_answers_every_value_of_the_key_in_order():
    for ex in examples("multivalue", 4):
        words = ex.input.split()
        key = words[-1]
        pairs = [(a, b) for a, b in zip(words, words[1:]) if a in rt.KEYS and b in rt.VALUES]
        stated = [b for a, b in pairs if a == key]
        assert len(stated) == rt.MULTIVALUE_VALUES and ex.output.split() == [key, *stated]
        assert len({a for a, _ in pairs}) == 3  # two other keys as distractors
        assert rt.references(ex) == stated


def _run_program(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Execute the `x = y` statements in order: every variable's value, and the order of assignment."""
    env: dict[str, str] = {}
    order = []
    for x, eq, y in zip(words, words[1:], words[2:]):
        if eq == "=":
            env[x] = env.get(y, y)
            order.append(x)
    return env, order


def test_variable_tracking_answers_every_variable_holding_the_value():
    hops = set()
    for n in (1, 4):
        for ex in examples("vt", n, 60):
            words = ex.input.split()
            value = words[-1]
            env, order = _run_program(words)
            holding = [x for x in order if env[x] == value]
            assert ex.output.split() == [value, *holding]
            assert len(set(env.values())) == 2  # a decoy chain of another value
            hops.add(len(holding) - 1)
    assert hops == {2, 3, 4}


def _simulate(words: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Replay the events: each person's place, each object's trail of places."""
    at: dict[str, str] = {}
    holder: dict[str, str] = {}
    trail: dict[str, list[str]] = {}
    for i, w in enumerate(words[:-1]):
        if w == "went" and words[i - 1] in rt.PEOPLE:
            person, place = words[i - 1], words[i + 2]
            at[person] = place
            for o, h in holder.items():
                if h == person:
                    trail[o].append(place)
        elif w == "took":
            person, obj = words[i - 1], words[i + 2]
            holder[obj] = person
            trail[obj] = [at[person]]
    return at, trail


def test_babilong_like_answers_follow_the_story():
    for n in (1, 4):
        for ex in examples("qa1", n):
            at, _ = _simulate(ex.input.split())
            assert ex.output == at[rt.question_words(ex)[-1]]
        for ex in examples("qa2", n):
            _, trail = _simulate(ex.input.split())
            assert ex.output == trail[rt.question_words(ex)[-1]][-1]
        for ex in examples("qa3", n):
            q = rt.question_words(ex)
            _, trail = _simulate(ex.input.split())
            places = trail[q[3]]
            assert len(places) == len(set(places)) >= 2 and q[-1] in places[1:]
            assert ex.output == places[places.index(q[-1]) - 1]


def test_qa1_needs_the_last_move():
    """Someone moves more than once in most stories: the answer is the last place, not any place of the person."""
    repeat = 0
    for ex in examples("qa1", 4, 100):
        words = ex.input.split()
        asked = rt.question_words(ex)[-1]
        repeat += sum(1 for a, b in zip(words, words[1:]) if a == asked and b == "went") > 1
    assert repeat > 30


def _w(text: str) -> list[str]:
    return text.split()


def test_ruler_score_is_the_fraction_of_references_present():
    """RULER's string_match_all on hand-made outputs: sum over references of `ref in output` / count."""
    assert rt.ruler_score(_w("k A C x"), ["A", "B", "C", "D"]) == 0.5
    assert rt.ruler_score(_w("k D C B A"), ["A", "B", "C", "D"]) == 1.0  # order does not matter
    assert rt.ruler_score(_w("9 7 7 2 1 <|endoftext|>"), ["9 7 7 2 1"]) == 1.0
    assert rt.ruler_score(_w("9 7 7 2 2"), ["9 7 7 2 1"]) == 0.0  # the passkey is one reference
    assert rt.ruler_score(_w("x 9 7 7 2 1"), ["9 7 7 2 1"]) == 1.0  # present anywhere
    assert rt.ruler_score(["Kitchen"], ["kitchen"]) == 1.0  # case-insensitive, as RULER lowercases both
    assert rt.ruler_score(["garden"], ["a"]) == 0.0  # words, not characters (see the docstring)
    assert rt.ruler_score([], ["A"]) == 0.0


def test_label_set_scoring_is_babilongs():
    """BABILong's compare_answers on hand-made outputs: the target, and no other label, in the first sentence;
    labels the question names do not count."""
    q1 = _w("where is mary")
    assert rt.label_set_correct(["kitchen"], "kitchen", q1)
    assert rt.label_set_correct(["Kitchen", "<|endoftext|>"], "kitchen", q1)
    assert not rt.label_set_correct(["garden"], "kitchen", q1)
    assert not rt.label_set_correct(_w("kitchen or garden"), "kitchen", q1)  # two labels: not an answer
    assert rt.label_set_correct(_w("kitchen . garden"), "kitchen", q1)  # only the first sentence counts
    assert not rt.label_set_correct(_w(". kitchen"), "kitchen", q1)
    q3 = _w("where was the apple before the garden")
    assert rt.label_set_correct(_w("garden kitchen"), "kitchen", q3)  # the question's label is ignored
    assert not rt.label_set_correct(["garden"], "kitchen", q3)


def test_mentioned_baselines_of_the_new_tasks():
    assert rt.mentioned_chance(examples("multikey", 4)[0]) == pytest.approx(1 / 4)  # 4 needles, 4 values
    assert rt.mentioned_chance(examples("multivalue", 4)[0]) == pytest.approx(1 / 3)  # 3 keys
    assert rt.mentioned_chance(examples("vt", 4)[0]) == pytest.approx(1 / 2)  # 2 chains
    for ex in examples("qa3", 4):  # the question's place is never the answer
        places = {w for w in ex.input.split() if w in rt.PLACES} - {rt.question_words(ex)[-1]}
        assert rt.mentioned_chance(ex) == pytest.approx(1 / len(places)) == pytest.approx(1 / 2)  # fresh places
    assert set(rt.CHANCE) == set(rt.TASK_TITLES) == set(rt.ALL_TASKS)
