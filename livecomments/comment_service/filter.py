"""The content filter of the write path: score a comment, then publish, hold or refuse it.

A :class:`ContentFilter` turns a :class:`Score` from a :class:`Scorer` into a
:class:`Verdict` with two thresholds. The built-in :class:`PatternScorer` combines
a word list with patterns for what live-chat spam looks like: links, invites,
repetition, shouting, mention and symbol floods. Operators supply their own word
list (:meth:`PatternScorer.from_file`) or their own scorer (:func:`load_scorer`).

Reason codes reported in :attr:`Score.reasons`, in this order:

``blocked_word``  a word or phrase from the blocked list (alone scores >= 0.95)
``suspect_word``  a word or phrase from the suspect list (about 0.35 each, capped)
``link``          URLs, bare or obfuscated domains ("example dot com")
``invite_spam``   Discord/Telegram/WhatsApp invites, links or "add me on ..." talk
``spam_link``     a link together with a suspect phrase, the classic spam shape
``repetition``    runs of one character, few distinct characters, repeated words
``shouting``      a long message in capitals (small)
``mention_spam``  many @mentions
``symbol_spam``   a message that is mostly emoji or symbols (small)
"""

from __future__ import annotations

import enum
import importlib
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

__all__ = [
    "DEFAULT_BLOCKED",
    "DEFAULT_SUSPECT",
    "ContentFilter",
    "PatternScorer",
    "Score",
    "Scorer",
    "Verdict",
    "load_scorer",
]

# Deliberately small placeholders: every community needs its own list, so
# operators pass one with `filter_words_file` (see PatternScorer.from_file).
DEFAULT_BLOCKED: tuple[str, ...] = (
    "kys",
    "kill yourself",
    "fuck you",
    "motherfucker",
    "piece of shit",
    "buy followers",
    "free followers",
    "cheap followers",
    "buy viewers",
    "free viewers",
)
DEFAULT_SUSPECT: tuple[str, ...] = (
    "free robux",
    "free vbucks",
    "robux generator",
    "double your bitcoin",
    "double your crypto",
    "double your money",
    "dm me for",
    "check my bio",
    "check my profile",
    "check my channel",
    "click here",
    "subscribe to my channel",
    "sub4sub",
    "follow for follow",
    "follow4follow",
    "promo code",
    "airdrop",
    "onlyfans",
    "make money fast",
    "earn money",
    "guaranteed profit",
    "investment opportunity",
)


class Verdict(enum.StrEnum):
    """What the write path does with a comment."""

    PUBLISH = "publish"
    HOLD = "hold"  # stored, invisible until a moderator approves it
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Score:
    """How likely a text is spam or abuse, and why.

    ``value`` runs from 0.0 (clean) to 1.0 (certainly bad); ``reasons`` are the
    stable short codes listed in this module's docstring.
    """

    value: float
    reasons: tuple[str, ...]


class Scorer(Protocol):
    """Anything that scores comment text; it runs on every post, so it must be fast."""

    def score(self, text: str) -> Score: ...


# --- Signal strengths: each is a probability-like 0..1, combined as 1 - prod(1 - s).
_BLOCKED = 0.95
_SUSPECT = 0.35
_SUSPECT_CAP = 0.8
_LINK = 0.6  # one link; n links score 1 - (1 - _LINK) ** n
_LINK_CAP = 0.97
_INVITE_LINK_SCORE = 0.9
_INVITE_TALK_SCORE = 0.6
_SPAM_LINK = 0.75
_SHOUT_MIN_CASED = 16
_MENTION_MIN = 3
_MENTION_CAP = 0.8
_SYMBOL_MIN = 10
_REPEAT_CAP = 0.97
# Laughter ("kkkkkkkkkk", "hahahaha", "wwwww") and cheering ("GOOOOOO") are
# ordinary chat, so a run only starts to count at this many characters.
_RUN_START = 24
# "no no no no" is chat; words start to count as repetition above this many uses each.
_TOKENS_PER_DISTINCT_START = 4.0

# Invisible characters used to split a word without changing how it looks.
_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"
_DROP_INVISIBLE = str.maketrans(dict.fromkeys(_INVISIBLE))
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)

# "Letter" is a word character other than "_", so "k_y_s" splits like "k.y.s".
_L = r"[^\W_]"
_BEFORE = rf"(?<!{_L})"
_AFTER = rf"(?!{_L})"
_LETTERS = re.compile(rf"{_L}+")
_NON_LETTERS = re.compile(r"[\W_]+")
_REPEATS = re.compile(r"(.)\1+", re.DOTALL)
# Three or more single letters with separators between them: "s.p.a.m", "s p a m".
_SPELLED_OUT = re.compile(rf"{_BEFORE}{_L}{_AFTER}(?:[\W_]+{_L}{_AFTER}){{2,}}")

_TLDS = (
    "com|net|org|io|ly|gg|co|tv|me|xyz|ru|info|biz|link|click|top|shop|site|online|app|dev"
    "|live|store|club|vip|fun|icu|su|cc|tk|ml|ga|cf|gq|pw|ws|uk|de|br|fr|jp|cn|pl|nl|au|ca"
)
# Country codes that are also common words ("ok.so", "me.to", "it.is") are left out.
_LINKS = re.compile(
    "|".join(
        (
            r"https?://\S+",
            r"www\.\S+",
            # example dot com, example(.)com, example[dot]com, example . com
            # ("the dot com bubble", "polka dot org" are not links)
            r"(?<![\w-])(?!(?:the|a|an|polka|no)\b)[a-z0-9-]{2,}+"
            r"(?:\s*[(\[{]\s*(?:dot|\.)\s*[)\]}]\s*|\s+dot\s+"
            r"|\s+\.\s*|\s*\.\s+)(?:com|net|org|io|gg|xyz|ru|info|biz)(?![\w-])",
            # Possessive labels keep a long "a.a.a.a..." from backtracking.
            rf"(?<![\w.-])(?:[a-z0-9-]++\.)+(?:{_TLDS})(?![\w-])(?:/\S*)?",
        )
    )
)
_INVITE_LINKS = re.compile(
    r"discord(?:app)?\s*(?:\.|\(\.\)|\[\.\]|\s+dot\s+)\s*(?:gg|io|me|li|com\s*/\s*invite)\b"
    r"|\bt\.me/|\btelegram\.(?:me|dog)/|\bchat\.whatsapp\.com/|\bwa\.me/"
)
_INVITE_TALK = re.compile(
    r"\bjoin\s+(?:my|our)\s+(?:discord|telegram|whatsapp)\b"
    r"|\b(?:add|dm|message|msg|text|contact|reach|hit)\s+me\s+(?:up\s+)?(?:on|at|via|in)\s+"
    r"(?:discord|telegram|whatsapp|tg)\b"
    r"|\b(?:telegram|whatsapp|tg)\s*:?\s*(?:@\w|\+?\d[\d\s().-]{6,})"
)
# Every invite pattern contains one of these; most messages skip the regexes.
_INVITE_HINTS = ("discord", "t.me/", "telegram", "whatsapp", "wa.me/", "tg")
_MENTIONS = re.compile(r"(?<![\w@])@\w{2,}")
_CHAR_RUNS = re.compile(rf"(.)\1{{{_RUN_START - 1},}}", re.DOTALL)
# Emoji, arrows, shapes, dingbats and ASCII punctuation; not combining marks,
# which Hindi or Arabic text is full of.
_SYMBOLS = re.compile(
    "[\u2190-\u21ff\u2300-\u23ff\u2460-\u24ff\u25a0-\u27bf\u2900-\u297f\u2b00-\u2bff"
    "\U0001f000-\U0001faff\ufe0f\u200d!-/:-@\\[-`{-~]"
)


def _plain(text: str) -> str:
    """Fold width, ligatures and case, and drop invisible characters."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROP_INVISIBLE)


def _unspell(match: re.Match[str]) -> str:
    return _NON_LETTERS.sub("", match.group())


def _word_pattern(tokens: list[str]) -> str:
    """A whole-word pattern that tolerates stretched letters and glued or split words.

    A single letter matches once or three and more times, a double one twice or
    more: "kysss" and "sssspam" match, but the Swedish "kyss" does not match "kys".
    """
    parts = []
    for token in tokens:
        part = ""
        for ch, group in itertools.groupby(token):
            c = re.escape(ch)
            run = len(list(group))
            part += f"{c}(?:{c}{c}+)?" if run == 1 else f"{c}{{{run},}}"
        parts.append(part)
    return _BEFORE + r"[\W_]*".join(parts) + _AFTER


class _WordList:
    """Whole-word matching whose cost does not grow with the length of the list.

    Entries are indexed by the squeezed form ("followers" -> "folowers") of their
    first word and of all their words glued together; a text only runs the
    precompiled patterns of entries whose key is one of its squeezed words.
    """

    __slots__ = ("_index", "entries")

    def __init__(self, words: Iterable[str], exclude: frozenset[str] = frozenset()) -> None:
        if isinstance(words, str):
            raise TypeError("pass an iterable of words, not a single string")
        index: dict[str, list[re.Pattern[str]]] = {}
        seen = set(exclude)
        for word in words:
            tokens = _LETTERS.findall(_plain(word).translate(_LEET))
            key = " ".join(tokens)
            if not tokens or key in seen:
                continue
            seen.add(key)
            pattern = re.compile(_word_pattern(tokens))
            for k in {_REPEATS.sub(r"\1", tokens[0]), _REPEATS.sub(r"\1", "".join(tokens))}:
                index.setdefault(k, []).append(pattern)
        self._index = {k: tuple(v) for k, v in index.items()}
        self.entries = frozenset(seen - exclude)

    def count(self, folded: str, squeezed_words: Iterable[str]) -> int:
        candidates = {p for w in squeezed_words for p in self._index.get(w, ())}
        return sum(len(p.findall(folded)) for p in candidates)


def _combine(signals: Iterable[float]) -> float:
    return 1.0 - math.prod(1.0 - s for s in signals)


def _repetition(text: str, plain: str) -> float:
    """How extreme the repetition in a text is, 0 when there is none worth noting."""
    longest = max((len(m.group()) for m in _CHAR_RUNS.finditer(text)), default=0)
    compact = "".join(text.split())
    distinct = len(set(compact))
    # Text made of a handful of characters ("hahaha...", "buynowbuynow...") is
    # treated as one run, shortened by how many characters it cycles through.
    if 0 < distinct <= 12:
        longest = max(longest, int(len(compact) * min(1.0, 4 / distinct)))
    by_chars = 0.0 if longest < _RUN_START else 0.2 + (longest - _RUN_START) * 0.012
    words = plain.split()
    by_words = 0.0
    if len(words) >= 5:
        per_distinct = len(words) / len(set(words))
        if per_distinct > _TOKENS_PER_DISTINCT_START:
            by_words = 1.0 - _TOKENS_PER_DISTINCT_START / per_distinct
    return min(_REPEAT_CAP, max(by_chars, by_words))


def _shouting(text: str) -> float:
    lower = sum(map(str.islower, text))
    if lower * 5 > len(text):  # then upper < 4 * lower: not shouting, skip counting
        return 0.0
    upper = sum(map(str.isupper, text))
    cased = upper + lower
    if cased < _SHOUT_MIN_CASED or upper < 0.8 * cased:
        return 0.0
    return min(0.3, 0.1 + cased / 200)


class PatternScorer:
    """The built-in scorer: a blocked and a suspect word list plus spam patterns.

    Words match whole and case-insensitively after folding the usual disguises:
    leetspeak ("k1ll"), stretched letters ("kyyyys"), spelled-out letters
    ("k.y.s", "k y s"), full-width or styled letters, invisible characters. An
    entry may be a phrase ("buy followers"), which also matches glued together
    ("buyfollowers"). Everything is compiled here; :meth:`score` is linear in the
    length of the text and independent of the size of the word lists.
    """

    __slots__ = ("_blocked", "_suspect")

    def __init__(
        self,
        blocked_words: Iterable[str] = DEFAULT_BLOCKED,
        suspect_words: Iterable[str] = DEFAULT_SUSPECT,
    ) -> None:
        self._blocked = _WordList(blocked_words)
        # A word on both lists is blocked; matching it twice would only add noise.
        self._suspect = _WordList(suspect_words, exclude=self._blocked.entries)

    @classmethod
    def from_file(cls, path: str) -> PatternScorer:
        """A scorer whose lists come from a UTF-8 file, replacing the defaults.

        One word or phrase per line; a line starting with ``?`` is a suspect word,
        any other a blocked one. ``#`` starts a comment at the beginning of a line
        or after whitespace, so ``#hashtag`` entries remain possible mid-line.
        """
        blocked: list[str] = []
        suspect: list[str] = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            entry = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if entry.startswith("?"):
                suspect.append(entry[1:].strip())
            elif entry:
                blocked.append(entry)
        return cls(blocked, suspect)

    def score(self, text: str) -> Score:
        """Score one comment (NFC-normalised and stripped, a few hundred characters)."""
        plain = _plain(text)
        folded = _SPELLED_OUT.sub(_unspell, plain.translate(_LEET))
        squeezed_words = _LETTERS.findall(_REPEATS.sub(r"\1", folded))
        signals: list[tuple[str, float]] = []

        blocked = self._blocked.count(folded, squeezed_words)
        if blocked:
            signals.append(("blocked_word", _combine([_BLOCKED] * blocked)))
        suspect = self._suspect.count(folded, squeezed_words)
        if suspect:
            signals.append(("suspect_word", min(_SUSPECT_CAP, _combine([_SUSPECT] * suspect))))
        links = sum(1 for _ in _LINKS.finditer(plain))
        if links:
            signals.append(("link", min(_LINK_CAP, _combine([_LINK] * links))))
        if any(hint in plain for hint in _INVITE_HINTS):
            if _INVITE_LINKS.search(plain):
                signals.append(("invite_spam", _INVITE_LINK_SCORE))
            elif _INVITE_TALK.search(plain):
                signals.append(("invite_spam", _INVITE_TALK_SCORE))
        if links and suspect:
            signals.append(("spam_link", _SPAM_LINK))

        repetition = _repetition(text, plain)
        if repetition:
            signals.append(("repetition", repetition))
        shouting = _shouting(text)
        if shouting:
            signals.append(("shouting", shouting))
        mentions = len(_MENTIONS.findall(text))
        if mentions >= _MENTION_MIN:
            signals.append(("mention_spam", min(_MENTION_CAP, 0.15 * (mentions - 1))))
        symbols = len(_SYMBOLS.findall(text))
        if symbols >= _SYMBOL_MIN and symbols * 2 >= len(text):
            signals.append(("symbol_spam", min(0.3, 0.1 + 0.01 * (symbols - _SYMBOL_MIN))))

        value = _combine(s for _, s in signals)
        return Score(round(min(1.0, max(0.0, value)), 3), tuple(r for r, _ in signals))


class ContentFilter:
    """Turns a score into a verdict: below ``hold`` publish, from ``refuse`` refuse.

    A score in between is held for a moderator, and so is a score that is not a
    number (a broken custom scorer should not publish, nor refuse everything).
    """

    __slots__ = ("hold_threshold", "refuse_threshold", "scorer")

    def __init__(self, scorer: Scorer, hold_threshold: float, refuse_threshold: float) -> None:
        if not 0.0 <= hold_threshold <= refuse_threshold <= 1.0:
            raise ValueError(
                "the filter thresholds need 0 <= hold <= refuse <= 1, got "
                f"hold={hold_threshold} refuse={refuse_threshold}"
            )
        self.scorer = scorer
        self.hold_threshold = hold_threshold
        self.refuse_threshold = refuse_threshold

    def check(self, text: str) -> tuple[Verdict, Score]:
        """The verdict on ``text`` and the score it rests on."""
        score = self.scorer.score(text)
        if score.value < self.hold_threshold:
            return Verdict.PUBLISH, score
        if score.value >= self.refuse_threshold:
            return Verdict.REFUSE, score
        return Verdict.HOLD, score


def load_scorer(spec: str, words_file: str = "") -> Scorer:
    """The scorer named by a setting.

    ``""`` is the built-in :class:`PatternScorer`, with the lists of ``words_file``
    when given. ``"package.module:name"`` imports ``name``; a class or factory is
    called with no arguments. The result must have a ``score`` method. Raises
    ValueError for a spec that does not name such an object, and for a words file
    given with a custom scorer (it would silently be ignored).
    """
    if not spec:
        return PatternScorer.from_file(words_file) if words_file else PatternScorer()
    if words_file:
        raise ValueError("a words file only applies to the built-in scorer (an empty spec)")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a scorer is named 'package.module:name', not {spec!r}")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import the scorer module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"{module_name!r} has no {attr!r}") from exc
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "score")):
        try:
            obj = obj()
        except TypeError as exc:  # it wants arguments: not a factory we can call
            raise ValueError(f"{spec!r} cannot be called without arguments: {exc}") from exc
    if not callable(getattr(obj, "score", None)):
        raise ValueError(f"{spec!r} is not a scorer: it has no score(text) method")
    return cast(Scorer, obj)
