"""Pure text helpers for decoding: word normalisation, loop trimming, stable prefixes.

Kept apart from the model wrapper so the rules are unit-tested on strings, without Whisper.
"""

from __future__ import annotations

import re

_WORD_CHARS = re.compile(r"[^a-z0-9']+")
_SENTENCE_END = re.compile(r"[.?!]$")


def norm_word(word: str) -> str:
    """Lower-case, punctuation-free form of a word, for comparing hypotheses."""
    return _WORD_CHARS.sub("", word.lower())


def norm_text(text: str) -> str:
    """Normalised text for WER: lower case, punctuation removed, single spaces."""
    return " ".join(w for w in (norm_word(t) for t in text.split()) if w)


def _eq(a: list[str], b: list[str]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


def trim_repetitions(text: str, budget_hit: bool) -> str:
    """Cut the decoder loops that short encoder windows provoke.

    Whisper decoding a trimmed (not 30 s-padded) window tends to start the sentence over
    once it reaches the end of the audio: ``"A thin stripe runs down the middle. A thin
    stripe runs"``. Two rules, applied to words compared in normalised form:

    1. A run of >= 3 words immediately repeated (``X X``) is a loop wherever it occurs:
       real speech does not repeat a three-word phrase back to back often enough to be
       worth the risk, and when it does the final still carries one copy. The text is cut
       after the first copy. (Shorter runs -- "very very", "no no" -- are left alone.)
    2. When the decode was cut by its token budget (it did not end on its own), text after
       the last sentence end that restarts an earlier sentence (is a prefix of it) is the
       beginning of a loop and is cut. Only then: a complete decode may legitimately start
       two sentences with the same word.
    """
    words = text.split()
    if len(words) < 2:
        return text
    keys = [norm_word(w) for w in words]
    n = len(words)
    cut = n
    for i in range(n):
        if i >= cut:
            break
        for p in range(3, (n - i) // 2 + 1):
            if _eq(keys[i : i + p], keys[i + p : i + 2 * p]):
                cut = min(cut, i + p)
                break
    words = words[:cut]
    keys = keys[:cut]
    if budget_hit and len(words) >= 2:
        # sentence starts: index 0 and every word after one ending in . ? !
        starts = [0] + [i + 1 for i, w in enumerate(words[:-1]) if _SENTENCE_END.search(w)]
        last = starts[-1]
        if last > 0:
            tail = keys[last:]
            for s in starts[:-1]:
                if _eq(keys[s : s + len(tail)], tail):
                    words = words[:last]
                    break
    return " ".join(words)


def common_prefix_words(a: list[str], b: list[str]) -> int:
    """Number of leading words two hypotheses agree on (normalised comparison)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if norm_word(x) != norm_word(y) or not norm_word(x):
            break
        n += 1
    return n


class StablePrefix:
    """LocalAgreement-n over successive partial hypotheses of one utterance.

    A word is committed once the last ``agreement`` hypotheses all agree on it and on
    everything before it -- and it is not the newest hypothesis's last word, which may be a
    word the audio cut in half. Committed words never change: every later partial and the
    final are forced to start with them (the final decode receives them as a decoder
    prefix). Because a wrong commit is therefore permanent, the default is 3 hypotheses, not
    the 2 of ufal's whisper_streaming: greedy partials two in a row agreed on "Men the coat"
    where the beam-searched final hears "mend the coat".
    """

    def __init__(self, agreement: int = 3) -> None:
        if agreement < 2:
            raise ValueError("agreement must be >= 2")
        self.agreement = agreement
        self.committed: list[str] = []
        self._history: list[list[str]] = []

    @property
    def text(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: str) -> str:
        """Feed a new hypothesis; returns the text to show (committed words + the rest)."""
        words = hypothesis.split()
        k = len(self.committed)
        if common_prefix_words(self.committed, words) < k:
            # The model changed its mind about committed words: keep our promise and show
            # the committed words followed by whatever the new hypothesis has after them.
            words = self.committed + words[k:]
        self._history = [*self._history, words][-self.agreement :]
        if len(self._history) == self.agreement:
            agreed = len(words) - 1
            for older in self._history[:-1]:
                agreed = min(agreed, common_prefix_words(older, words))
            if agreed > k:
                self.committed = words[:agreed]
        return " ".join(words)

    def reset(self) -> None:
        self.committed = []
        self._history = []
