"""Every Redis key of the system, and the members that name events inside them.

The convention: a key is the deployment's prefix (``redis_prefix``: ``lc:`` by
default, ``{namespace}:`` in tests; it carries its own separator) followed by
colon-separated parts. The first part is the *family*, lower case with hyphens,
named after what the key is for; the ids it is about follow. The keys of one video
that the sequencer's scripts touch in one call (its counter, its epoch, its
recent-comments cache) are the family ``v``, the video id as a Redis Cluster hash
tag ``{<video>}`` (so they share one slot), then the key's name. Every key is built
by :class:`Keys` (a few scripts build some the same way, listed at the end);
``tests/unit`` lists them all and checks this.

The key strings are those a deployed Redis already holds, so a few older habits
stay although they do not follow the rule to the letter: outside ``v`` the video
id is not hash-tagged and comes before or after the user (``slow:<video>:<user>``,
``dup:<user>:<video>:…``); some families are hyphenated words rather than parts
(``login-gate``, ``vs-index``, ``bans-loaded``); and the cache is ``recent2`` (the
cache written before the reply index existed was left to expire). The outbox is one
key for every video, so one sweep finds them all; on Redis Cluster it would want one
outbox per slot, and the scripts that touch it and a video's keys would have to be
split (not supported yet).

Every key, after the prefix (type; owner, the module that writes it; TTL):

The stream (``livecomments/kernel/sequencer.py``):

- ``v:{<video>}:seq`` string; sequencer. No TTL. The video's counter: the last seq
  handed out (one INCR per seq).
- ``v:{<video>}:epoch`` string; sequencer. No TTL. The counter's epoch (ms at
  seeding); a new one when the counter is re-created.
- ``outbox`` sorted set; sequencer (adds), comment_service/recent.py (removes, when
  settled), comment_service/outbox.py (sweeps). No TTL. :func:`outbox_member`
  ``<video>|<seq>`` scored by time (ms): sequenced, not yet settled.
- ``outbox:missing`` sorted set; comment_service/outbox.py. No TTL; sightings older
  than an hour are dropped. Outbox members missing from the store, scored by the
  first time they were found missing.

The recent-comments cache (``livecomments/comment_service/recent.py``):

- ``v:{<video>}:recent2`` sorted set; recent. ``recent_cache_ttl`` (24 h) after its
  last write, capped at ``recent_cache_size`` (500) entries. The newest events by
  seq: comment JSON, or a stub for change markers.
- ``v:{<video>}:recent-replies`` sorted set; recent. As the cache. The reply index:
  :func:`reply_member` ``<parent>|<seq>`` (both zero-padded), every score 0.
- ``v:{<video>}:pinned`` string; pinned (``livecomments/comment_service/pinned.py``).
  1 h after its last write. The pinned comment's JSON, or ``none``: what first pages
  show, copied from the video's document in the store.

Viewer counts (``livecomments/kernel/viewers.py``):

- ``v:{<video>}:viewers`` hash (a field per RTMS node: ``<boot> <count>``); every
  RTMS node serving the video writes its own field, readers add the fields of live
  nodes. ``VIEWERS_TTL`` (2 min) after its last write. The video's viewers per node.

Limits (``livecomments/comment_service/limits.py``):

- ``rl:<name>`` hash (``tokens``, ``ts``); limits. Until the bucket is full again
  (capacity / rate + 1 s). Token buckets; the names: ``post-user:<user>``,
  ``post-ip:<ip>``, ``login-ip:<ip>``, ``login-fail:<account>:<ip>``,
  ``login-account:<account>`` (limits.py), and from the HTTP routes
  ``register-ip:<ip>``, ``history-user:<user>``, ``history-ip:<ip>``,
  ``react-user:<user>``, ``report-user:<user>``, ``moderate-user:<user>``.
- ``login-gate:<account>`` string; limits. The back-off delay (1 s, doubling up to
  ``login_backoff_max``). While it exists, unknown addresses may not try.
- ``login-level:<account>`` string; limits. The account bucket's refill time
  (``login_backoff_account``, 300 s). How many times the back-off doubled.
- ``login-known:<account>:<ip>`` string; limits. ``login_known_address_days`` (30 d).
  The address logged in to the account before (exempt from the back-off).
- ``dup:<user>:<video>:<digest>`` string; limits. ``duplicate_window`` (30 s).
  Duplicate suppression (the digest is of the case-folded text).
- ``slow:<video>:<user>`` string; limits. The video's slow mode. Slow mode.

Moderation policy (``livecomments/comment_service/policy.py``; the admission check
reads these):

- ``ban:<scope>:<user>`` string; policy. Until the ban expires (none for a permanent
  ban). A copy of an active ban; the scope is a video id or ``*`` (every video).
- ``bans-loaded`` string; policy. No TTL. The copy of the bans (and warnings) is complete.
- ``warning:<user>`` string (the warning's id); policy. No TTL: deleted when the user
  acknowledges it. A copy of a user's unacknowledged warning; their posts are refused.
- ``vs:<video>`` hash (``slow_mode``, ``hold``, ``min_age``, ``at``); policy. No TTL
  (rewritten by every reload). A copy of a video's settings, only for videos that have some.
- ``vs-index`` set of video ids; policy. No TTL. The videos with a ``vs:`` hash.
- ``settings-loaded`` string; policy. ``SETTINGS_RESYNC`` (300 s). The copy of the
  settings is complete (its expiry forces a reload).

Accounts and posting (``livecomments/comment_service/auth.py``, ``idempotency.py``):

- ``revoked:<token>`` string; auth. Until the token expires. A logged-out token
  (its ``jti``).
- ``idem:<user>:<video>:<key>`` hash (``id``, ``fp``, ``state``, ``at``,
  ``status``); idempotency. ``idempotency_window`` (24 h). An ``Idempotency-Key``'s
  record.

Reactions (``livecomments/comment_service/reactions.py``):

- ``rx:u:<comment>:<name>`` set of user ids; reactions. 3 days, from the last click.
  Who reacted with that name.
- ``rx:c:<comment>`` hash (name to count); reactions. 3 days, from the last click.
  The totals.
- ``rx:dirty:<video>`` set of comment ids; reactions. No TTL (deleted when a push
  claims the video). Comments changed since the video's last push.
- ``rx:videos`` set of video ids; reactions. No TTL (members leave when claimed).
  Videos with changes to push.
- ``rx:unflushed`` set of :func:`unflushed_member` ``<video>|<comment>``; reactions.
  No TTL (members leave when flushed). Comments whose totals the store lacks.
- ``rx:last:<video>`` string; reactions. The push interval (1 s). The video was
  pushed: no other replica pushes it again before this expires.

Some scripts build a key or a member themselves, from the prefix or from their
arguments, exactly as here: ``reactions_claim.lua`` (``rx:last:``, ``rx:dirty:``,
``rx:c:``), ``policy_resync.lua`` (``vs:``, from ``Keys.video_settings("")``),
``reactions_react.lua`` (the ``rx:unflushed`` member), ``lib_next_seq.lua``,
``sequencer_settled_head.lua`` and ``recent_range.lua`` (the outbox member) and
``recent_settle.lua`` (the reply-index member).
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = ":"  # between the parts of a key
MEMBER_SEPARATOR = "|"  # between a video id and a number in a member


def _key(prefix: str, *parts: str | int) -> str:
    """The one builder of a key: the prefix, then the parts joined by ``:``."""
    return prefix + SEPARATOR.join(str(p) for p in parts)


def _tag(video: str) -> str:
    """The video id as a Redis Cluster hash tag (its keys land in one slot)."""
    return f"{{{video}}}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one deployment (one prefix); see the module docstring for each."""

    prefix: str

    # -- the stream -----------------------------------------------------------

    def seq(self, video: str) -> str:
        return _key(self.prefix, "v", _tag(video), "seq")

    def epoch(self, video: str) -> str:
        return _key(self.prefix, "v", _tag(video), "epoch")

    def outbox(self) -> str:
        return _key(self.prefix, "outbox")

    def outbox_missing(self) -> str:
        return _key(self.prefix, "outbox", "missing")

    # -- the recent-comments cache ---------------------------------------------

    def recent(self, video: str) -> str:
        return _key(self.prefix, "v", _tag(video), "recent2")

    def recent_replies(self, video: str) -> str:
        return _key(self.prefix, "v", _tag(video), "recent-replies")

    def pinned(self, video: str) -> str:
        """The video's pinned comment as a first page shows it (``pinned.py``)."""
        return _key(self.prefix, "v", _tag(video), "pinned")

    def viewers(self, video: str) -> str:
        """The video's viewers on each RTMS node (``kernel/viewers.py``)."""
        return _key(self.prefix, "v", _tag(video), "viewers")

    # -- limits ---------------------------------------------------------------------

    def bucket(self, *name: str | int) -> str:
        """A token bucket; ``name`` is its kind and ids (``"post-user", user``)."""
        return _key(self.prefix, "rl", *name)

    def login_gate(self, account: str) -> str:
        return _key(self.prefix, "login-gate", account)

    def login_level(self, account: str) -> str:
        return _key(self.prefix, "login-level", account)

    def login_known(self, account: str, ip: str) -> str:
        return _key(self.prefix, "login-known", account, ip)

    def duplicate(self, user: int | str, video: str, digest: str) -> str:
        return _key(self.prefix, "dup", user, video, digest)

    def slow(self, video: str, user: int | str) -> str:
        return _key(self.prefix, "slow", video, user)

    # -- moderation policy ------------------------------------------------------

    def ban(self, scope: str, user: int | str) -> str:
        return _key(self.prefix, "ban", scope, user)

    def warning(self, user: int | str) -> str:
        """A user's unacknowledged warning (its id): their posts wait for the acknowledgement."""
        return _key(self.prefix, "warning", user)

    def bans_loaded(self) -> str:
        return _key(self.prefix, "bans-loaded")

    def video_settings(self, video: str) -> str:
        """A video's settings; ``video_settings("")`` is the prefix of them all."""
        return _key(self.prefix, "vs", video)

    def video_settings_index(self) -> str:
        return _key(self.prefix, "vs-index")

    def settings_loaded(self) -> str:
        return _key(self.prefix, "settings-loaded")

    # -- accounts and posting ----------------------------------------------------

    def revoked(self, token: str) -> str:
        return _key(self.prefix, "revoked", token)

    def idempotency(self, user: int | str, video: str, key: str) -> str:
        return _key(self.prefix, "idem", user, video, key)

    # -- reactions --------------------------------------------------------------------

    def reaction_users(self, comment: int | str, name: str) -> str:
        return _key(self.prefix, "rx", "u", comment, name)

    def reaction_counts(self, comment: int | str) -> str:
        return _key(self.prefix, "rx", "c", comment)

    def reaction_dirty(self, video: str) -> str:
        return _key(self.prefix, "rx", "dirty", video)

    def reaction_videos(self) -> str:
        return _key(self.prefix, "rx", "videos")

    def reaction_unflushed(self) -> str:
        return _key(self.prefix, "rx", "unflushed")

    def reaction_last(self, video: str) -> str:
        return _key(self.prefix, "rx", "last", video)


# -- members ------------------------------------------------------------------------


def outbox_member(video: str, seq: int) -> str:
    """A sequenced event's entry in the outbox: ``<video>|<seq>``."""
    return f"{video}{MEMBER_SEPARATOR}{seq}"


def parse_outbox_member(raw: str | bytes) -> tuple[str, int] | None:
    """``(video, seq)`` of an outbox member, or None for anything malformed."""
    return _parse_member(raw)


def unflushed_member(video: str, comment: int) -> str:
    """A comment whose reaction totals the store lacks: ``<video>|<comment id>``."""
    return f"{video}{MEMBER_SEPARATOR}{comment}"


def parse_unflushed_member(raw: str | bytes) -> tuple[str, int] | None:
    """``(video, comment id)`` of an ``rx:unflushed`` member, or None if malformed."""
    return _parse_member(raw)


def _parse_member(raw: str | bytes) -> tuple[str, int] | None:
    member = raw.decode() if isinstance(raw, bytes) else str(raw)
    video, _, number = member.rpartition(MEMBER_SEPARATOR)
    if not video or not number.isdigit() or not number.isascii():
        return None
    return video, int(number)


def reply_member(parent_id: int | str, seq: int) -> str:
    """A reply's member in the reply index: ``<parent id>|<seq>``, both padded to 20
    digits, so the index sorts by parent, then by seq (``lib_pad.lua`` pads the same)."""
    return f"{int(parent_id):020d}{MEMBER_SEPARATOR}{int(seq):020d}"
