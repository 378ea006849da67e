"""What the system keeps in Redis: every key, the members, and every Lua script (no Redis)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from redis.asyncio import Redis

from livecomments.comment_service.admission import Verdict
from livecomments.comment_service.limits import ADMIT_ARGS, ADMIT_KEYS, Limiter, PostLimits
from livecomments.kernel.rates import Rate
from livecomments.kernel.redis import keys as keys_module
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import (
    Keys,
    outbox_member,
    parse_outbox_member,
    parse_unflushed_member,
    reply_member,
    unflushed_member,
)
from livecomments.kernel.stream import Position

PACKAGE = Path(keys_module.__file__).parent

# Every key, with the string a deployed Redis holds for it (they must never change).
KEYS: dict[str, tuple[tuple[str | int, ...], str]] = {
    "seq": (("vid",), "lc:v:{vid}:seq"),
    "epoch": (("vid",), "lc:v:{vid}:epoch"),
    "outbox": ((), "lc:outbox"),
    "outbox_missing": ((), "lc:outbox:missing"),
    "recent": (("vid",), "lc:v:{vid}:recent2"),
    "recent_replies": (("vid",), "lc:v:{vid}:recent-replies"),
    "pinned": (("vid",), "lc:v:{vid}:pinned"),
    "viewers": (("vid",), "lc:v:{vid}:viewers"),
    "bucket": (("login-fail", "bob", "10.0.0.1"), "lc:rl:login-fail:bob:10.0.0.1"),
    "login_gate": (("bob",), "lc:login-gate:bob"),
    "login_level": (("bob",), "lc:login-level:bob"),
    "login_known": (("bob", "10.0.0.1"), "lc:login-known:bob:10.0.0.1"),
    "duplicate": ((7, "vid", "abc"), "lc:dup:7:vid:abc"),
    "slow": (("vid", 7), "lc:slow:vid:7"),
    "ban": (("*", 7), "lc:ban:*:7"),
    "bans_loaded": ((), "lc:bans-loaded"),
    "warning": ((7,), "lc:warning:7"),
    "video_settings": (("vid",), "lc:vs:vid"),
    "video_settings_index": ((), "lc:vs-index"),
    "settings_loaded": ((), "lc:settings-loaded"),
    "revoked": (("jti",), "lc:revoked:jti"),
    "idempotency": ((7, "vid", "k1"), "lc:idem:7:vid:k1"),
    "reaction_users": ((9, "heart"), "lc:rx:u:9:heart"),
    "reaction_counts": ((9,), "lc:rx:c:9"),
    "reaction_dirty": (("vid",), "lc:rx:dirty:vid"),
    "reaction_videos": ((), "lc:rx:videos"),
    "reaction_unflushed": ((), "lc:rx:unflushed"),
    "reaction_last": (("vid",), "lc:rx:last:vid"),
}


def builders() -> list[str]:
    return sorted(name for name in dir(Keys) if not name.startswith("_") and name != "prefix")


def template(name: str) -> str:
    """The key ``name`` builds, with each argument shown as ``<parameter>``."""
    params = inspect.signature(getattr(Keys, name)).parameters
    return getattr(Keys(""), name)(*(f"<{p}>" for p in params if p != "self"))


def test_every_key_keeps_the_string_redis_holds() -> None:
    assert builders() == sorted(KEYS)  # a new key is listed here (and in the docstring)
    keys = Keys("lc:")
    for name, (args, expected) in KEYS.items():
        assert getattr(keys, name)(*args) == expected, name


@pytest.mark.parametrize("name", builders())
def test_every_key_follows_the_convention_and_is_catalogued(name: str) -> None:
    key = template(name)
    family, *parts = key.split(":")
    assert re.fullmatch(r"[a-z][a-z0-9-]*", family), key
    for part in parts:  # literal words, or one whole id each
        assert re.fullmatch(r"[a-z][a-z0-9-]*|<[a-z]+>|\{<video>\}", part), key
    if family == "v":  # a video's stream keys: the hash-tagged video, then the name
        assert len(parts) == 2 and parts[0] == "{<video>}", key
    else:
        assert "{" not in key, key
    # The module docstring lists it, with its type, owner and TTL.
    assert f"``{key}``" in (keys_module.__doc__ or ""), key


def test_keys_start_with_the_prefix_as_given() -> None:
    for prefix in ("lc:", "t3-limits:", ""):
        for name, (args, expected) in KEYS.items():
            assert getattr(Keys(prefix), name)(*args) == prefix + expected.removeprefix("lc:")


def test_outbox_members_round_trip() -> None:
    for video, seq in (("v1", 1), ("a-b_c", 2**62), ("x", 0)):
        member = outbox_member(video, seq)
        assert member == f"{video}|{seq}"
        assert parse_outbox_member(member) == (video, seq)
        assert parse_outbox_member(member.encode()) == (video, seq)
    for bad in ("", "v1", "|5", "v1|", "v1|x", "v1|-1", "v1|٣", "v1|1.5"):
        assert parse_outbox_member(bad) is None, bad
    assert unflushed_member("v1", 123) == "v1|123"
    assert parse_unflushed_member(b"v1|123") == ("v1", 123)
    assert parse_unflushed_member("v1") is None


def test_reply_members_sort_by_parent_then_seq() -> None:
    assert reply_member(5, 12) == f"{5:020d}|{12:020d}"
    assert reply_member("5", 12) == reply_member(5, 12)
    members = [reply_member(p, s) for p, s in ((10, 3), (9, 40), (10, 2), (2**62, 1))]
    assert sorted(members) == [members[1], members[2], members[0], members[3]]


def test_every_lua_file_is_found_once() -> None:
    on_disk = sorted(p.stem for p in (PACKAGE / "scripts").glob("*.lua"))
    assert sorted(scripts.files()) == on_disk and len(on_disk) >= 20
    assert len({name.lower() for name in on_disk}) == len(on_disk)
    for name in on_disk:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", name), name
    assert scripts.names() == sorted(n for n in on_disk if not n.startswith(scripts.LIBRARY))


@pytest.mark.parametrize("name", scripts.names())
def test_every_script_loads_with_its_libraries(name: str) -> None:
    text = scripts.source(name)
    assert text.endswith(scripts.files()[name])
    for lib in scripts.includes(name):
        assert lib.startswith(scripts.LIBRARY) and lib in scripts.files(), lib
        assert scripts.files()[lib] in text
    assert scripts.files()[name].startswith("--")  # says what it takes and returns
    redis = Redis()  # never connects: registering only hashes the text
    assert scripts.register(redis, name).sha


def test_libraries_include_nothing_and_are_not_scripts() -> None:
    libraries = [n for n in scripts.files() if n.startswith(scripts.LIBRARY)]
    assert libraries
    for lib in libraries:
        assert scripts.includes(lib) == []
        assert any(lib in scripts.includes(name) for name in scripts.names()), lib
        with pytest.raises(KeyError):
            scripts.source(lib)
    with pytest.raises(KeyError):
        scripts.source("no_such_script")


def test_every_script_is_registered_by_the_code() -> None:
    """Each script is run by some module, and each module registers only scripts that exist."""
    registered: set[str] = set()
    for path in (PACKAGE.parent.parent).rglob("*.py"):
        registered |= set(
            re.findall(r"scripts\.register\(\s*\w+,\s*\"(\w+)\"", path.read_text("utf-8"))
        )
    assert registered == set(scripts.names())


def test_the_admission_layout_agrees_with_its_script() -> None:
    declared = re.search(
        r"^local ADMIT_KEYS, ADMIT_ARGS = (\d+), (\d+)$", scripts.files()["lib_admit"], re.M
    )
    assert declared and (int(declared[1]), int(declared[2])) == (ADMIT_KEYS, ADMIT_ARGS)
    limiter = Limiter(Redis(), "lc:")
    keys = limiter.admission_keys(
        user_id=7, ip="10.0.0.1", video_id="vid", text="hi", revoked_key="r"
    )
    assert len(keys) == ADMIT_KEYS
    rate = Rate.parse("5/10")
    fixed = limiter.admission_args(PostLimits(rate, rate, 30.0), exempt=False)
    # Then the post's own two: its filter score and its account's creation time.
    assert len(fixed) + 2 == ADMIT_ARGS


def test_scripts_build_keys_and_members_as_the_key_module_does() -> None:
    claim, resync = scripts.files()["reactions_claim"], scripts.files()["policy_resync"]
    keys = Keys("")
    for family in (keys.reaction_last(""), keys.reaction_dirty(""), keys.reaction_counts("")):
        assert f"'{family}'" in claim, family
    assert keys.video_settings("") == "vs:" and "prefix .. video" in resync
    separator = f"'{keys_module.MEMBER_SEPARATOR}'"
    for name in ("lib_next_seq", "sequencer_settled_head", "recent_range", "reactions_react"):
        assert f".. {separator} .." in scripts.files()[name], name
    assert f".. {separator} .. pad(" in scripts.files()["recent_settle"]


def test_an_admitted_post_carries_its_position() -> None:
    assert Verdict("ok", 0, 5, 7).position == Position(7, 5)
    assert Verdict("ok", 0, 0, 0).position is None  # not sequenced
    assert Verdict("ok", 0, -1, 0).position is None  # the counter needs seeding
