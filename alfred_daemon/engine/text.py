"""Pure text helpers for decoding: word normalisation, loop trimming, stable prefixes.

Kept apart from the model wrapper so the rules are unit-tested on strings, without Whisper.
"""

from __future__ import annotations

import re
import zlib

_WORD_CHARS = re.compile(r"[^a-z0-9']+")
_SENTENCE_END = re.compile(r"[.?!]$")
_CONTEXT_WORDS = 12
"""Words of the text before a decode's window considered part of a repeat it makes."""


def norm_word(word: str) -> str:
    """Lower-case, punctuation-free form of a word, for comparing hypotheses."""
    return _WORD_CHARS.sub("", word.lower())


def norm_text(text: str) -> str:
    """Normalised text for WER: lower case, punctuation removed, single spaces."""
    return " ".join(w for w in (norm_word(t) for t in text.split()) if w)


def _eq(a: list[str], b: list[str]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


def trim_repetitions(text: str, budget_hit: bool, context: str = "") -> str:
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
    before = context.split()[-_CONTEXT_WORDS:]
    words = before + text.split()
    if len(words) - len(before) < 1 or len(words) < 2:
        return text
    keys = [norm_word(w) for w in words]
    n = len(words)
    cut = n
    for i in range(n):
        if i >= cut:
            break
        for p in range(3, (n - i) // 2 + 1):
            if i + 2 * p > len(before) and _eq(keys[i : i + p], keys[i + p : i + 2 * p]):
                cut = min(cut, max(i + p, len(before)))
                break
    words = words[len(before) : cut]
    keys = keys[len(before) : cut]
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


def find_repetition(words: list[str], context: list[str] | None = None) -> str | None:
    """How ``words`` repeat themselves the way a looping decoder does, or None.

    Three patterns, on normalised words: one word three times in a row ("5 5 5"), a run of
    two or more words twice in a row ("one two one two"), or a run of six words twice
    anywhere. With ``context`` (the text just before ``words``), a pattern that begins
    there counts too, if it ends in ``words``: a decode that repeats the end of the text
    before its window is a loop as well. Real speech does each now and then ("zero zero
    zero" in a digit string), so this flags a decode for a second look, it does not
    condemn it.
    """
    before = [k for k in (norm_word(w) for w in context or []) if k]
    keys = before + [k for k in (norm_word(w) for w in words) if k]
    n, first = len(keys), len(before)
    for i in range(n - 2):
        if i + 2 >= first and keys[i] == keys[i + 1] == keys[i + 2]:
            return f"{keys[i]!r} three times in a row"
    for size in range(2, n // 2 + 1):
        for i in range(n - 2 * size + 1):
            if i + 2 * size > first and keys[i : i + size] == keys[i + size : i + 2 * size]:
                return f"{' '.join(keys[i : i + size])!r} twice in a row"
    seen: dict[tuple[str, ...], int] = {}
    for i in range(n - 5):
        gram = tuple(keys[i : i + 6])
        if gram in seen and seen[gram] + 6 <= i and i + 6 > first:
            return f"{' '.join(gram)!r} twice"
        seen.setdefault(gram, i)
    return None


def compression_ratio(text: str) -> float:
    """zlib compression ratio of ``text``: loops compress far better than speech (Whisper's
    and faster-whisper's fallback test uses 2.4)."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


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

    def update(self, hypothesis: str, *, commit: bool = True) -> str:
        """Feed a new hypothesis; returns the text to show (committed words + the rest).
        With ``commit=False`` it counts for later agreement but commits nothing now."""
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
            if agreed > k and commit:
                self.committed = words[:agreed]
        return " ".join(words)

    def restart(self, committed: list[str]) -> None:
        """Start over from ``committed`` (words forced as committed, with no history)."""
        self.committed = list(committed)
        self._history = []

    def rebase(self, k: int) -> None:
        """Forget the first ``k`` committed words (they moved out of the decode window):
        later hypotheses start after them, and so do the ones kept for agreement."""
        k = min(k, len(self.committed))
        self.committed = self.committed[k:]
        self._history = [h[k:] for h in self._history]
