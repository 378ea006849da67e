"""The content filter: what the built-in scorer catches, verdicts, and loading scorers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from livecomments.comment_service.filter import (
    DEFAULT_BLOCKED,
    ContentFilter,
    PatternScorer,
    Score,
    Verdict,
    load_scorer,
)

HOLD, REFUSE = 0.5, 0.9


def fullwidth(ascii_text: str) -> str:
    """The full-width look-alike of printable ASCII ("kys" -> "\uff4b\uff59\uff53")."""
    return "".join(chr(ord(c) + 0xFEE0) for c in ascii_text)


class AlwaysHold:
    """A custom scorer, loaded by dotted path in the tests below."""

    def score(self, text: str) -> Score:
        return Score(0.7, ("custom",))


def make_always_hold() -> AlwaysHold:
    return AlwaysHold()


ALWAYS_HOLD = AlwaysHold()
NOT_A_SCORER = 42


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, text: str) -> Score:
        return Score(self.value, ())


@pytest.fixture(scope="module")
def scorer() -> PatternScorer:
    return PatternScorer()


@pytest.fixture(scope="module")
def content_filter(scorer: PatternScorer) -> ContentFilter:
    return ContentFilter(scorer, HOLD, REFUSE)


CLEAN = [
    "lol",
    "GG",
    "hello from Brazil!",
    "that was insane 😂😂",
    "what song is this?",
    "LETS GOOO",
    "LETS GOOOOOOOOOOOOOOOOOOOOOO",
    "I love this stream",
    "first",
    "omg 10/10",
    "nice play at 3:45",
    "pog",
    'he said "no way"',
    "e.g. this is fine, ok.so what, Mr.Beast is here, v1.2 is out",
    "is there a discord?",
    "the dot com bubble was wild",
    "I'm at 99.5% hp, GG WP",
    "kkkkkkkkkkkkkkkkkkkkk",
    "hahahahahahahahahahahahahahaha",
    "wwwwwwwwwwwwwww",
    "no no no no no",
    "@streamer hi!",
    "que jogada incrível, muito bom mesmo! abraço do Rio",
    "すごい\uff01\uff01\uff01草",  # full-width "!"
    "これは最高の配信です",
    "مرحبا بالجميع من مصر",
    "привет всем из Москвы, отличный стрим",
    "kyss mig",  # Swedish "kiss me", one letter off the blocked "kys"
    "THIS IS THE BEST STREAM I HAVE EVER SEEN",
    "Honestly this has been one of the best streams I have watched all year, the way you "
    "handled that last boss fight was incredible and I can't believe you dodged every single "
    "attack at the end. Can you please play the next level tomorrow? Greetings from Lisbon!",
]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_chat_scores_low_and_is_published(
    scorer: PatternScorer, content_filter: ContentFilter, text: str
) -> None:
    assert scorer.score(text).value < 0.3
    assert content_filter.check(text)[0] is Verdict.PUBLISH


@pytest.mark.parametrize(
    "text",
    [
        "kys",
        "KYS",
        "just kys already",
        "k.y.s",
        "k y s",
        "k_y_s",
        "kyyyyys",
        fullwidth("kys"),
        "k\u200bys",  # zero-width space
        "buy followers here",
        "BUY F0LL0WERS",
        "buyfollowers",
        "b u y followers",
        "f r e e f o l l o w e r s",
        "you are a piece of sh1t",
        "m0therfuck3r",
        "k1ll y0ur$elf",
    ],
)
def test_blocked_words_and_their_disguises_are_refused(
    scorer: PatternScorer, content_filter: ContentFilter, text: str
) -> None:
    score = scorer.score(text)
    assert score.value >= 0.95
    assert "blocked_word" in score.reasons
    assert content_filter.check(text)[0] is Verdict.REFUSE


@pytest.mark.parametrize(
    "text",
    ["skys the limit", "kysa", "followers of the band", "I bought it from a follower"],
)
def test_blocked_words_match_whole_words_only(scorer: PatternScorer, text: str) -> None:
    assert "blocked_word" not in scorer.score(text).reasons


@pytest.mark.parametrize(
    "text",
    ["spam", "SPAM", "sssspam", "spaaaaam", "s.p.a.m", "s p a m", "5p4m", "$p@m", "spam!"],
)
def test_custom_blocked_word_folding(text: str) -> None:
    scorer = PatternScorer(["spam"], [])
    assert scorer.score(text).reasons == ("blocked_word",)


@pytest.mark.parametrize("text", ["spa", "spams", "spammm ok", "sspam"])
def test_custom_blocked_word_near_misses(text: str) -> None:
    # A doubled letter may be a real spelling, so only 3+ count as stretching.
    scorer = PatternScorer(["spam", "spamm"], [])
    expected = ("blocked_word",) if text == "spammm ok" else ()
    assert scorer.score(text).reasons == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com",
        "look at this http://example.org/page?x=1",
        "www.example.com",
        "example.com/x",
        "visit example.com.",
        "bit.ly/abc123",
        "example dot com",
        "example(.)com",
        "example [dot] net",
        "example . com",
        fullwidth("EXAMPLE.COM"),
    ],
)
def test_a_single_link_is_held(
    scorer: PatternScorer, content_filter: ContentFilter, text: str
) -> None:
    assert scorer.score(text).reasons == ("link",)
    assert content_filter.check(text)[0] is Verdict.HOLD


def test_more_links_score_higher(scorer: PatternScorer) -> None:
    one = scorer.score("see a.com").value
    two = scorer.score("see a.com and b.net").value
    three = scorer.score("see a.com and b.net and https://c.org/x").value
    assert one < two < three <= 1.0


@pytest.mark.parametrize(
    "text",
    [
        "free robux at example.com",
        "click here https://x.com/win",
        "dm me for promo www.example.com",
        "check my bio: bit.ly/abc",
    ],
)
def test_a_link_with_a_spam_phrase_is_refused(
    scorer: PatternScorer, content_filter: ContentFilter, text: str
) -> None:
    score = scorer.score(text)
    assert {"link", "suspect_word", "spam_link"} <= set(score.reasons)
    assert content_filter.check(text)[0] is Verdict.REFUSE


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("discord.gg/abc123", Verdict.REFUSE),
        ("join us at discord dot gg/abc", Verdict.REFUSE),
        ("t.me/cheapcoins", Verdict.REFUSE),
        ("chat.whatsapp.com/Abc123", Verdict.REFUSE),
        ("join my discord", Verdict.HOLD),
        ("add me on telegram", Verdict.HOLD),
        ("whatsapp +1 555 123 4567", Verdict.HOLD),
    ],
)
def test_invites(
    scorer: PatternScorer, content_filter: ContentFilter, text: str, verdict: Verdict
) -> None:
    assert "invite_spam" in scorer.score(text).reasons
    assert content_filter.check(text)[0] is verdict


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("lol lol lol lol lol lol", Verdict.PUBLISH),
        ("a" * 40, Verdict.PUBLISH),
        ("lol " * 10, Verdict.HOLD),
        ("buy now cheap " * 10, Verdict.HOLD),
        ("a" * 60, Verdict.HOLD),
        ("buynow" * 15, Verdict.HOLD),
        ("a" * 200, Verdict.REFUSE),
        ("lol " * 100, Verdict.REFUSE),
        ("spam this chat " * 30, Verdict.REFUSE),
    ],
)
def test_repetition_scales_with_how_extreme_it_is(
    scorer: PatternScorer, content_filter: ContentFilter, text: str, verdict: Verdict
) -> None:
    text = text.strip()
    assert "repetition" in scorer.score(text).reasons
    assert content_filter.check(text)[0] is verdict


def test_longer_runs_score_higher(scorer: PatternScorer) -> None:
    values = [scorer.score("a" * n).value for n in (30, 45, 60, 80, 100)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    ("text", "reason", "verdict"),
    [
        ("THIS IS THE BEST STREAM I HAVE EVER SEEN", "shouting", Verdict.PUBLISH),
        ("@aa @bb @cc hello", "mention_spam", Verdict.PUBLISH),
        ("@aa @bb @cc @dd @ee @ff look", "mention_spam", Verdict.HOLD),
        ("😂🔥💯👀🎉✨😍🙏💀🤣", "symbol_spam", Verdict.PUBLISH),
        ("check my bio", "suspect_word", Verdict.PUBLISH),
    ],
)
def test_weak_signals_are_reported(
    scorer: PatternScorer,
    content_filter: ContentFilter,
    text: str,
    reason: str,
    verdict: Verdict,
) -> None:
    assert scorer.score(text).reasons == (reason,)
    assert content_filter.check(text)[0] is verdict


def test_suspect_words_add_up_but_are_capped(scorer: PatternScorer) -> None:
    one = scorer.score("free robux").value
    two = scorer.score("free robux, click here").value
    many = scorer.score("free robux click here check my bio dm me for sub4sub promo code").value
    assert 0.3 <= one < two < many <= 0.8


def test_weak_signals_combine(scorer: PatternScorer) -> None:
    shouting = scorer.score("CHECK OUT THIS AMAZING STREAM EVERYONE").value
    link = scorer.score("check out example.com everyone").value
    both = scorer.score("CHECK OUT EXAMPLE.COM THIS AMAZING STREAM EVERYONE").value
    assert both == pytest.approx(1 - (1 - shouting) * (1 - link), abs=0.02)
    assert both > max(shouting, link)


@pytest.mark.parametrize(
    "text", [*CLEAN, "kys " * 50, "a.com " * 80, "@aa " * 100, "😂" * 300, "x" * 500]
)
def test_scores_are_rounded_and_in_range(scorer: PatternScorer, text: str) -> None:
    value = scorer.score(text.strip()).value
    assert 0.0 <= value <= 1.0
    assert value == round(value, 3)


def test_a_word_list_must_not_be_a_single_string() -> None:
    with pytest.raises(TypeError):
        PatternScorer("kys")


@pytest.mark.parametrize(
    ("hold", "refuse"),
    [(0.6, 0.5), (-0.1, 0.5), (0.5, 1.1), (math.nan, 0.9), (0.5, math.nan)],
)
def test_thresholds_are_validated(hold: float, refuse: float) -> None:
    with pytest.raises(ValueError):
        ContentFilter(Fixed(0.0), hold, refuse)


@pytest.mark.parametrize(
    ("value", "hold", "refuse", "verdict"),
    [
        (0.0, 0.5, 0.9, Verdict.PUBLISH),
        (0.499, 0.5, 0.9, Verdict.PUBLISH),
        (0.5, 0.5, 0.9, Verdict.HOLD),
        (0.899, 0.5, 0.9, Verdict.HOLD),
        (0.9, 0.5, 0.9, Verdict.REFUSE),
        (1.0, 0.5, 0.9, Verdict.REFUSE),
        (0.7, 0.7, 0.7, Verdict.REFUSE),  # equal thresholds: no hold band
        (0.0, 0.0, 1.0, Verdict.HOLD),  # hold everything
        (1.0, 1.0, 1.0, Verdict.REFUSE),
        (math.nan, 0.5, 0.9, Verdict.HOLD),  # a broken scorer neither publishes nor refuses
    ],
)
def test_verdict_thresholds(value: float, hold: float, refuse: float, verdict: Verdict) -> None:
    result, score = ContentFilter(Fixed(value), hold, refuse).check("anything")
    assert result is verdict
    assert score.value == value or math.isnan(value)


def test_load_scorer_default() -> None:
    scorer = load_scorer("")
    assert isinstance(scorer, PatternScorer)
    assert "blocked_word" in scorer.score(DEFAULT_BLOCKED[0]).reasons


def test_load_scorer_from_words_file(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text(
        "# our community's list\n"
        "\n"
        "banana split   # inline comment\n"
        "?cherry\n"
        "? durian pie\n"
        "#elderberry\n",
        encoding="utf-8",
    )
    scorer = load_scorer("", str(words))
    assert scorer.score("I want a BANANA SPLIT").reasons == ("blocked_word",)
    assert scorer.score("ch3rry please").reasons == ("suspect_word",)
    assert scorer.score("durian pie").reasons == ("suspect_word",)
    # Comment lines are not words, and the file replaces the default lists.
    assert scorer.score("elderberry").reasons == ()
    assert scorer.score("kys").reasons == ()
    assert scorer.score("free robux").reasons == ()


@pytest.mark.parametrize(
    "spec",
    ["tests.unit.test_filter:AlwaysHold", "tests.unit.test_filter:make_always_hold"],
)
def test_load_scorer_calls_classes_and_factories(spec: str) -> None:
    scorer = load_scorer(spec)
    assert isinstance(scorer, AlwaysHold)
    verdict, score = ContentFilter(scorer, HOLD, REFUSE).check("hello")
    assert (verdict, score.reasons) == (Verdict.HOLD, ("custom",))


def test_load_scorer_uses_an_instance_as_is() -> None:
    assert load_scorer("tests.unit.test_filter:ALWAYS_HOLD") is ALWAYS_HOLD


@pytest.mark.parametrize(
    "spec",
    [
        "tests.unit.test_filter",
        "tests.unit.test_filter:",
        ":AlwaysHold",
        "tests.no_such_module:AlwaysHold",
        "tests.unit.test_filter:NoSuchScorer",
        "tests.unit.test_filter:NOT_A_SCORER",
        "tests.unit.test_filter:Fixed.score",
        "tests.unit.test_filter:test_load_scorer_default",  # a factory returning None
    ],
)
def test_load_scorer_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        load_scorer(spec)


def test_load_scorer_rejects_a_words_file_for_a_custom_scorer(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("banana\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_scorer("tests.unit.test_filter:AlwaysHold", str(words))
