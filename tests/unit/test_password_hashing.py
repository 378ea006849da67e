"""The cost of password hashes: named presets, the production default, no lock-out."""

from __future__ import annotations

import logging

import pytest
from argon2.exceptions import VerifyMismatchError

from livecomments.comment_service.auth import HASHING, password_hasher
from livecomments.kernel import settings as cfg


def test_the_default_is_rfc_9106s_second_recommendation() -> None:
    assert cfg.load(cfg.CommentServiceSettings, environ={}).password_hashing == "rfc9106"
    hasher = password_hasher("rfc9106")
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 65536, 4)
    assert hasher.hash("correct horse battery").startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_owasp_minimum() -> None:
    hasher = password_hasher("owasp")
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (2, 19456, 1)


def test_a_hash_verifies_whatever_the_cost_now_set() -> None:
    """A hash carries its parameters: changing the setting locks nobody out."""
    digests = {name: password_hasher(name).hash("correct horse battery") for name in HASHING}
    for name in HASHING:
        for digest in digests.values():
            assert password_hasher(name).verify(digest, "correct horse battery")
            with pytest.raises(VerifyMismatchError):
                password_hasher(name).verify(digest, "wrong horse battery")


def test_the_test_only_cost_says_so_and_unknown_names_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        password_hasher("test-only")
    assert "never run this in production" in caplog.text
    with pytest.raises(ValueError, match="password_hashing is one of"):
        password_hasher("fast")
