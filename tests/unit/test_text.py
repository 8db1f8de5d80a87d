"""Unit tests of the pure text helpers: loop trimming, normalisation, stable prefixes."""

from __future__ import annotations

import pytest

from alfred_daemon.engine.text import (
    StablePrefix,
    common_prefix_words,
    norm_text,
    norm_word,
    trim_repetitions,
)

JFK = (
    "And so my fellow Americans ask not what your country can do for you ask what you can "
    "do for your country"
)

# --------------------------------------------------------------------------- trim_repetitions


@pytest.mark.parametrize("budget_hit", [False, True])
def test_immediate_loop_cut_after_first_copy(budget_hit: bool) -> None:
    text = "mend the coat before you go out before you go out before you"
    assert trim_repetitions(text, budget_hit) == "mend the coat before you go out"


def test_immediate_loop_compared_in_normalised_form() -> None:
    text = "A thin stripe runs down. a thin stripe runs down the middle"
    assert trim_repetitions(text, False) == "A thin stripe runs down."


def test_three_word_loop_is_the_shortest_cut() -> None:
    assert trim_repetitions("one two three one two three", False) == "one two three"
    # a two-word repeat is not a loop
    assert trim_repetitions("thank you thank you very much", False) == (
        "thank you thank you very much"
    )


def test_trailing_sentence_restart_cut_only_when_budget_hit() -> None:
    text = "We are sure that one war is enough. We"
    assert trim_repetitions(text, True) == "We are sure that one war is enough."
    assert trim_repetitions(text, False) == text


def test_trailing_restart_of_longer_prefix() -> None:
    text = "A thin stripe runs down the middle. A thin stripe runs"
    assert trim_repetitions(text, True) == "A thin stripe runs down the middle."
    assert trim_repetitions(text, False) == text


def test_trailing_restart_of_an_earlier_sentence_not_the_last() -> None:
    text = "Come here. Sit down. Come"
    assert trim_repetitions(text, True) == "Come here. Sit down."


@pytest.mark.parametrize("budget_hit", [False, True])
def test_legit_text_untouched(budget_hit: bool) -> None:
    assert trim_repetitions(JFK, budget_hit) == JFK
    assert trim_repetitions("I went home. I slept.", budget_hit) == "I went home. I slept."
    assert trim_repetitions("very very good", budget_hit) == "very very good"
    assert trim_repetitions("no no no", budget_hit) == "no no no"


def test_trailing_text_that_is_not_a_restart_kept_with_budget_hit() -> None:
    text = "We are sure. They"
    assert trim_repetitions(text, True) == text


@pytest.mark.parametrize("text", ["", "hello", "   "])
def test_short_inputs_returned_as_is(text: str) -> None:
    assert trim_repetitions(text, True) == text


# --------------------------------------------------------------------------- normalisation


def test_norm_text() -> None:
    assert norm_text("Hello, World!  It's  ME.") == "hello world it's me"
    assert norm_text("  And so,\tmy fellow\nAmericans... ") == "and so my fellow americans"
    assert norm_text("It costs 42 dollars - really?") == "it costs 42 dollars really"
    assert norm_text("U.S.A.") == "usa"
    assert norm_text("") == ""
    assert norm_text(" -- ... ") == ""


def test_norm_word_and_common_prefix() -> None:
    assert norm_word("Coat,") == "coat"
    assert common_prefix_words(["The", "cat,", "sat"], ["the", "cat", "ran"]) == 2
    assert common_prefix_words([], ["a"]) == 0
    # a punctuation-only word never counts as agreement
    assert common_prefix_words(["--", "a"], ["--", "a"]) == 0


# --------------------------------------------------------------------------- StablePrefix


def test_stable_prefix_commits_only_what_two_hypotheses_agree_on() -> None:
    sp = StablePrefix(agreement=2)
    assert sp.update("the cat") == "the cat"
    assert sp.text == ""  # one hypothesis is never enough
    assert sp.update("the cat sat on") == "the cat sat on"
    assert sp.text == "the cat"
    assert sp.update("the cat sat in the") == "the cat sat in the"
    assert sp.text == "the cat sat"  # "on"/"in" disagree


def test_stable_prefix_never_commits_newest_last_word() -> None:
    sp = StablePrefix(agreement=2)
    sp.update("good morning every")
    sp.update("good morning every")
    assert sp.committed == ["good", "morning"]
    sp.update("good morning everyone")
    assert sp.committed == ["good", "morning"]
    sp.update("good morning everyone here")
    assert sp.committed == ["good", "morning", "everyone"]


def test_stable_prefix_compares_normalised_and_only_grows() -> None:
    sp = StablePrefix(agreement=2)
    sp.update("Hello, world how")
    sp.update("hello world how are")
    assert sp.text == "hello world how"
    sp.update("hello world how")  # agrees on fewer words than committed
    assert sp.text == "hello world how"


def test_committed_words_never_change_when_model_changes_its_mind() -> None:
    sp = StablePrefix(agreement=2)
    sp.update("the quick brown")
    sp.update("the quick brown fox")
    assert sp.text == "the quick brown"
    shown = sp.update("a quick brown box jumps")
    assert shown == "the quick brown box jumps"
    assert sp.text.startswith("the quick brown")
    shown = sp.update("the")  # shorter than what is committed
    assert shown == "the quick brown"
    shown = sp.update("a quack")
    assert shown.startswith("the quick brown")
    assert sp.committed[:3] == ["the", "quick", "brown"]


def test_default_agreement_needs_three_hypotheses() -> None:
    sp = StablePrefix()
    sp.update("mend the coat")
    sp.update("mend the coat before")
    assert sp.text == ""
    sp.update("mend the coat before you")
    assert sp.text == "mend the coat"
    # commits reach only as far as the oldest of the last three hypotheses agrees
    sp.update("mend the coat before you go")
    assert sp.text == "mend the coat before"


def test_stable_prefix_every_shown_text_starts_with_every_earlier_commit() -> None:
    hypotheses = [
        "i",
        "i want",
        "i want to",
        "i want two",
        "i want to go",
        "eye want to go home",
        "i want to go home now",
        "i want to go home now",
    ]
    sp = StablePrefix(agreement=2)
    commits: list[str] = []
    for hyp in hypotheses:
        shown = sp.update(hyp)
        commits.append(sp.text)
        for c in commits:
            assert shown.split()[: len(c.split())] == c.split()
    assert sp.text == "i want to go home"


def test_stable_prefix_reset_and_validation() -> None:
    sp = StablePrefix(agreement=2)
    sp.update("a b c")
    sp.update("a b c d")
    assert sp.text
    sp.restart([])
    assert sp.text == ""
    sp.update("x y")
    assert sp.text == ""  # history was cleared too
    with pytest.raises(ValueError, match="agreement"):
        StablePrefix(agreement=1)
