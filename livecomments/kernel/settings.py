"""Settings: one frozen dataclass per component, built in one place.

Values come from, in increasing priority: the dataclass defaults, an optional
TOML file named by ``LIVECOMMENTS_CONFIG`` (``livecomments --config``: top-level
keys for every component, a ``[rtms]``, ``[dispatcher]`` or ``[comment_service]``
table for one), the ``LIVECOMMENTS_<FIELD>`` environment variables (or
``LIVECOMMENTS_<FIELD>_FILE``, the path of a file holding the value: a mounted
secret), then explicit overrides (CLI flags). Nothing else in the code reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import tomllib
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from livecomments.kernel.ids import MAX_WORKER
from livecomments.kernel.netaddr import TrustedProxies

ENV_PREFIX = "LIVECOMMENTS_"

# Ports `livecomments up` uses by default. Not the well-known ones, so a system
# Redis or ZooKeeper on this machine is never touched by accident.
DEFAULT_ZK_PORT = 21810
DEFAULT_REDIS_PORT = 16379
DEFAULT_MONGO_PORT = 27018

LOG_FORMATS = ("text", "json")


def is_host_port(value: str) -> bool:
    """Whether ``value`` reads as ``host:port`` (a port of 1..65535)."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host) and port.isdigit() and 0 < int(port) < 65536


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """Where the shared backends are, and the namespace inside each of them."""

    zk_hosts: str = f"127.0.0.1:{DEFAULT_ZK_PORT}"
    zk_root: str = "/livecomments"  # every znode lives under this path
    zk_session_timeout: float = 6.0  # seconds; ephemeral nodes vanish ~this long after a crash
    zk_timeout: float = 5.0  # every ZooKeeper call gives up after this many seconds
    # ZooKeeper digest credentials, "user:password" ("" = none). With them every
    # znode the project creates gets an ACL giving all permissions to that
    # identity only: every process and the CLI of one deployment share them.
    zk_auth: str = ""
    redis_url: str = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    redis_prefix: str = "lc:"
    # Redis Sentinel: "host:port" of each sentinel (comma-separated in the variable).
    # Set, they name the primary (redis_sentinel_master) and are asked again after a
    # failover; redis_url then gives only the database, the credentials and TLS
    # (rediss://), not the address.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "livecomments"
    redis_sentinel_password: str = ""  # the sentinels' own password, if they have one
    # (`up`'s embedded store; retryWrites=false: see cli/cluster.py embedded_store_uri)
    mongo_uri: str = f"mongodb://127.0.0.1:{DEFAULT_MONGO_PORT}/?retryWrites=false"
    mongo_db: str = "livecomments"
    mongo_timeout: float = 5.0
    log_level: str = "INFO"
    # "text" (one line per record, for people) or "json" (one JSON object per line
    # on stderr, for a log shipper: component, node id, and the video, comment and
    # request ids as fields where a record concerns one; see kernel/logs.py).
    log_format: str = "text"
    # The cost of argon2id password hashes (comment services and `create-admin`):
    # "rfc9106" (RFC 9106's second recommendation: 3 passes over 64 MiB, 4 lanes;
    # ~0.15 s a hash here), "owasp" (OWASP's minimum: 2 passes over 19 MiB, for
    # fleets that must log many users in per core), or "test-only" (1 pass over
    # 8 KiB: a test suite's thousands of sign-ups; never in production, and the
    # process says so at start). A hash keeps its parameters, so changing this
    # never locks anyone out.
    password_hashing: str = "rfc9106"
    # gRPC between the components (comment service -> dispatcher -> RTMS) is mutual
    # TLS: the CA that signed every component's certificate, and this process's
    # certificate (its role's name, e.g. "rtms.livecomments", as a DNS SAN) and
    # key. `livecomments up` and the tests make them. Without them a process
    # refuses to start unless grpc_insecure is set (plaintext, no peer check:
    # only for a network that authenticates peers by other means).
    grpc_ca: str = ""
    grpc_cert: str = ""
    grpc_key: str = ""
    grpc_insecure: bool = False
    # Placement (everyone computes it the same way, so these must agree cluster-wide).
    min_spread: int = 1  # RTMS nodes every video is placed on
    spread_viewers: int = 5000  # a video gets one more node per this many viewers
    max_spread: int = 4  # and at most this many
    # Peers allowed to say who the client is with X-Forwarded-For (an L7 proxy or
    # load balancer): addresses or CIDR ranges, comma-separated. The comment
    # service's rate limits and the RTMS node's connection limits count clients by
    # the address these peers report; anyone else is counted by its own address.
    trusted_proxies: tuple[str, ...] = ()
    # On SIGTERM a service first turns not ready (/readyz 503 "stopping", gRPC
    # health NOT_SERVING) and keeps serving this many seconds, so load balancers
    # and probes stop sending it work before it closes; then it stops. `up` and
    # the test clusters set 0.
    shutdown_delay: float = 5.0

    def __post_init__(self) -> None:
        TrustedProxies(self.trusted_proxies)  # a typo stops the process at start-up
        for entry in self.redis_sentinels:
            if not is_host_port(entry):
                raise ConfigError(
                    f"{ENV_PREFIX}REDIS_SENTINELS: expected host:port[,host:port...], got {entry!r}"
                )
        if self.shutdown_delay < 0:
            raise ConfigError(
                f"LIVECOMMENTS_SHUTDOWN_DELAY: expected seconds >= 0, got {self.shutdown_delay}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"{ENV_PREFIX}LOG_FORMAT: expected one of {', '.join(LOG_FORMATS)},"
                f" got {self.log_format!r}"
            )


@dataclasses.dataclass(frozen=True)
class RTMSSettings(BackendSettings):
    node_id: str = ""  # defaults to "rtms-<hostname>-<port>"
    host: str = "127.0.0.1"
    port: int = 8801  # SSE listener
    # Delivery service (gRPC). Its own address, private: it is what ZooKeeper
    # publishes for dispatchers to dial, while `host` faces viewers.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9801
    # "host:port" dispatchers dial instead, when they cannot reach grpc_host:grpc_port
    # as such: behind NAT, a TCP proxy or a Kubernetes Service ("" = grpc_host:grpc_port).
    grpc_advertise: str = ""
    # The admin listener: plain HTTP /metrics (Prometheus) and /healthz on a
    # private address. 0: none, and /metrics is served on the public listener
    # instead; set a port to keep metrics off the public one (it then answers 404).
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    # Largest SSE frame accepted from a dispatcher; a bigger one is refused
    # (counted in /healthz "refused"), never delivered.
    max_frame_bytes: int = 64 * 1024
    public_url: str = ""  # base URL viewers use, defaults to http(s)://host:port
    tls_cert: str = ""
    tls_key: str = ""
    cors_origins: tuple[str, ...] = ()  # exact origins allowed to open the stream; "*" for any
    heartbeat_interval: float = 15.0
    retry_ms: int = 2000
    ring_size: int = 1024  # recent frames kept per video for resume
    host_grace: float = 30.0  # keep hosting a video this long after its last viewer left
    max_viewer_buffer: int = 256 * 1024  # bytes queued for one viewer before it is dropped
    reorder_window: float = 0.05  # wait this long for a missing seq before asking the store
    coalesce_window: float = 0.005  # events within this long share one write per viewer
    # Viral mode: a video whose local viewers x events/s reach viral_deliveries
    # (0: never) is written at most once per viral_window, until it falls below
    # half of that. 100,000/s is ~10,000 viewers x 10 comments/s, where one
    # video's sends (~6 us each) start to fill a core.
    viral_deliveries: float = 100_000.0
    viral_window: float = 0.25
    # A seq the store still lacks this long after a gap showed is fenced (a void is
    # stored in its place, so its late writer takes another seq) and stepped over.
    gap_deadline: float = 3.0
    # Every this many seconds the node reads the heads of all its videos (one Redis
    # call per 1,000) and fills those still behind the head it saw the time before.
    reconcile_interval: float = 1.0
    # Resume: what the ring holds is always replayed; older events are read from
    # the store in pages of replay_page (concurrent resumers of a video share each
    # page read), at most replay_limit of them. A viewer further behind gets a
    # `reset` (reason too_far_behind) and reloads history instead.
    replay_limit: int = 1000
    replay_page: int = 200
    # A viewer whose replay, `moved` event or close cannot drain its buffer within
    # this many seconds is dropped (it resumes with its last event id).
    write_timeout: float = 10.0
    max_viewers: int = 18000  # the process has 20K file descriptors
    # Connection limits of the SSE listener, each refused with Retry-After and a
    # JSON error. The defaults leave room for many viewers behind one carrier-grade
    # NAT address (hundreds of subscribers share one) and a reconnect storm after
    # a node fails, and stop one address from taking a node.
    head_timeout: float = 10.0  # the request head (and the TLS handshake) within this: 408
    max_unattached: int = 2000  # connections not streaming yet (head or joining): 503 node_busy
    max_unattached_per_peer: int = 100  # of those, from one peer address: 429 too_many_connections
    max_streams_per_address: int = 1000  # streams from one client address: 429 too_many_streams
    # First viewers of videos this node does not host yet (each costs a ZooKeeper
    # write and a Redis or store read): per client address (429 too_many_joins),
    # and per node (503 node_busy), as "N/S" token buckets; and a cap on the
    # videos the node hosts (503 node_busy). An IPv6 client counts by its /64.
    join_limit_address: str = "20/10"
    channel_limit_node: str = "200/2"
    max_channels: int = 10000
    # How often the node looks at its load; its ZooKeeper record is rewritten only
    # when it moved by more than 10 % (or its busy videos changed: records.py).
    load_report_interval: float = 5.0
    # How often the node writes its viewers per video to Redis and reads the other
    # nodes' back, and each video's viewers are told the total over all nodes when it
    # changed (a `viewers` event); 0: never told, and counted every load report.
    viewer_count_interval: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grpc_advertise and not is_host_port(self.grpc_advertise):
            raise ConfigError(
                f"{ENV_PREFIX}GRPC_ADVERTISE: expected host:port, got {self.grpc_advertise!r}"
            )


@dataclasses.dataclass(frozen=True)
class DispatcherSettings(BackendSettings):
    node_id: str = ""
    host: str = "127.0.0.1"  # the gRPC listener: keep it private
    port: int = 9701
    # The admin listener: plain HTTP /metrics (Prometheus) and /healthz, on a
    # private address (0: none).
    admin_host: str = "127.0.0.1"
    admin_port: int = 9751
    deliver_timeout: float = 2.0  # seconds one Deliver to one RTMS node may take


@dataclasses.dataclass(frozen=True)
class CommentServiceSettings(BackendSettings):
    host: str = "127.0.0.1"
    port: int = 8443
    # The admin listener: plain HTTP /metrics (Prometheus) and /healthz on a
    # private address. 0: none, and /metrics is served on the public listener
    # instead; set a port to keep metrics off the public one (it then answers 404).
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    public_url: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    jwt_secret: str = ""  # required; every replica must share it
    jwt_ttl: int = 3600
    max_comment_chars: int = 500
    max_body_bytes: int = 16 * 1024
    history_page_max: int = 100
    dispatch_timeout: float = 3.0
    # One log line per request (logger livecomments.access): method, route
    # template and path, status, duration, bytes, client address, user agent and
    # request id. Off by default: a proxy in front usually keeps one already.
    access_log: bool = False
    # Exact origins of the pages that call the API from elsewhere ("*" for any). The
    # viewer page's own origin (public_url) is always allowed. Preflights are
    # answered for them, and every /api answer (errors too) carries the CORS headers.
    cors_origins: tuple[str, ...] = ()
    # Origins the viewer page may open streams on, besides the RTMS nodes that are
    # up when the page is served: its CSP connect-src, and the only origins whose
    # `moved` URLs it follows. Exact origins or host wildcards as CSP writes them
    # ("https://*.rtms.example.com"); set them in production so that nodes joining
    # after a page was loaded are reachable from it.
    rtms_origins: tuple[str, ...] = ()
    # Who may frame the viewer page: a CSP frame-ancestors source list, e.g.
    # "'self' https://www.example.com" to embed it there, or "'none'".
    frame_ancestors: str = "'self'"
    hsts_max_age: int = 31536000  # Strict-Transport-Security on answers over TLS (0 = off)
    # Older history pages (that cannot gain comments) may be cached this long, by
    # browsers and shared caches; an edit or a delete of an old comment can take that
    # long to show in them (the live stream shows it at once). 0: never cached.
    history_cache_seconds: int = 5
    # Token buckets, "N/S": bursts of N, refilled at N per S seconds. Shared by
    # every replica through Redis. Posting follows Twitch's 20 messages / 30 s.
    post_limit_user: str = "20/30"
    post_limit_ip: str = "60/30"  # several users may share an address (NAT, campus)
    # Logins: failed attempts to one account from one address lock that pair
    # (429 login_locked); attempts from one address to any account are a bucket.
    login_limit_account: str = "10/300"
    login_limit_ip: str = "30/300"
    # Failed logins to one account from every address together: past this bucket,
    # addresses the account never logged in from must wait between attempts, a
    # wait that doubles from login_backoff_first up to login_backoff_max seconds
    # (429 login_backoff). It slows a spray from many addresses without locking
    # the owner out: their own addresses (a login within login_known_address_days)
    # are exempt, and a new one waits at most login_backoff_max.
    login_backoff_account: str = "100/300"
    login_backoff_first: float = 1.0
    login_backoff_max: float = 60.0
    login_known_address_days: float = 30.0
    register_limit_ip: str = "10/3600"
    react_limit_user: str = "60/30"
    report_limit_user: str = "10/60"
    moderate_limit_user: str = "120/60"
    # Reads of history (pages, replies, one comment): per address for anonymous
    # readers, per user for logged-in ones. The viewer page reads one page on load
    # and short-polls every 2 s while its stream is down; many readers may share an
    # address (NAT, campus), hence the large burst.
    history_limit_ip: str = "600/60"
    history_limit_user: str = "300/60"
    # Idempotency-Key on posts: a retry with the same key (same user and video)
    # within this many seconds gets the first answer instead of a second comment.
    # 24 h, as Stripe: a phone that queued a post offline may retry hours later,
    # and a keyed post costs ~150 bytes of Redis for that long.
    idempotency_window: float = 86400.0
    duplicate_window: float = 30.0  # same text from the same user on a video is refused this long
    max_slow_mode: int = 3600  # seconds; the longest slow mode a moderator may set
    # The content filter: a scorer ("" = the built-in word list and patterns, or
    # "package.module:name") and two thresholds on its 0..1 score.
    filter_scorer: str = ""
    filter_words_file: str = ""
    filter_hold_threshold: float = 0.5  # at or above: held for a moderator
    filter_refuse_threshold: float = 0.9  # at or above: refused
    flag_threshold: int = 5  # reports against a user's comments before the user is flagged
    # Shield mode, the switch a moderator throws when a video is raided: at once
    # at least this slow mode, at most this hold threshold for the content filter,
    # and accounts younger than this cannot post; off restores what was before.
    shield_slow_mode: int = 30  # seconds
    shield_hold_threshold: float = 0.2
    shield_min_account_age: int = 600  # seconds
    reaction_push_interval: float = 1.0  # at most one reactions event per video this often
    reaction_flush_interval: float = 5.0  # reaction counts written to the store this often
    # Events whose dispatch is not confirmed after outbox_age seconds are sent again
    # (their writer died, or no dispatcher answered); swept every outbox_interval.
    outbox_age: float = 2.0
    outbox_interval: float = 1.0
    # A seq still missing from the store this long after the sweep first looked
    # for it is fenced (a void is stored in its place; its writer, if it ever
    # comes back, takes another seq): only then is its outbox entry dropped.
    outbox_fence_after: float = 5.0
    # The recent-comments cache (Redis, per video): the first history page and
    # short-polling clients (?after=) near the head are served from it.
    recent_cache_size: int = 500  # newest events kept per video (0 = off)
    recent_cache_ttl: float = 86400.0  # seconds a video's cache outlives its last write
    # The Snowflake worker ids this cluster's comment services lease ("first-last",
    # within 0-1023). Clusters (cells, docs/capacity.md) that share one MongoDB must
    # each have a range of their own, or two of them could make the same comment id.
    worker_ids: str = "0-1023"

    @property
    def worker_range(self) -> tuple[int, int]:
        first, _, last = self.worker_ids.partition("-")
        return int(first), int(last)

    def __post_init__(self) -> None:
        super().__post_init__()
        first, sep, last = self.worker_ids.partition("-")
        numbers = sep and first.isdigit() and last.isdigit()
        if not (numbers and 0 <= int(first) <= int(last) <= MAX_WORKER):
            raise ConfigError(
                f"{ENV_PREFIX}WORKER_IDS: expected first-last within 0-{MAX_WORKER},"
                f" got {self.worker_ids!r}"
            )
        if not 0 <= self.shield_slow_mode <= self.max_slow_mode:
            raise ConfigError(
                f"{ENV_PREFIX}SHIELD_SLOW_MODE: expected 0 to max_slow_mode"
                f" ({self.max_slow_mode}) seconds, got {self.shield_slow_mode}"
            )
        if not 0.0 <= self.shield_hold_threshold <= 1.0:
            raise ConfigError(
                f"{ENV_PREFIX}SHIELD_HOLD_THRESHOLD: expected 0 to 1,"
                f" got {self.shield_hold_threshold}"
            )
        if self.shield_min_account_age < 0:
            raise ConfigError(
                f"{ENV_PREFIX}SHIELD_MIN_ACCOUNT_AGE: expected seconds >= 0,"
                f" got {self.shield_min_account_age}"
            )


S = TypeVar("S", bound=BackendSettings)

# The exit status of a process refused by its configuration (sysexits' EX_CONFIG).
EXIT_CONFIG = 78


class ConfigError(ValueError):
    """A setting's value is wrong: the message names the variable and what it expects.

    ``problems`` lists every bad value found at once (the message joins them).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


def _convert(raw: Any, kind: Any, name: str) -> Any:
    if not isinstance(raw, str):
        return raw
    variable = ENV_PREFIX + name.upper()
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{variable}: expected a boolean (true/false), got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{variable}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{variable}: expected a number, got {raw!r}") from None
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _read_secret(variable: str, path: str) -> str:
    """A value kept in a file (a mounted secret): its text without the final newline."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc}") from None


CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
# The table of a TOML file that holds one component's own values.
SECTIONS: dict[str, type[BackendSettings]] = {
    "rtms": RTMSSettings,
    "dispatcher": DispatcherSettings,
    "comment_service": CommentServiceSettings,
}


def _all_fields() -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for cls in SECTIONS.values():
        hints.update(typing.get_type_hints(cls))
    return hints


def _from_file(value: Any, kind: Any, where: str) -> Any:
    """A TOML value checked against the field's type (TOML is typed: no guessing)."""
    if kind is bool:
        ok = isinstance(value, bool)
        expected = "a boolean (true/false)"
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
        value = float(value) if ok else value
    elif typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = value.split(",")
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        expected = "a list of strings"
        value = tuple(item.strip() for item in value if item.strip()) if ok else value
    else:
        ok = isinstance(value, str)
        expected = "a string"
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return value


def read_config_file(path: str, cls: type[BackendSettings]) -> dict[str, Any]:
    """The values a TOML configuration file gives ``cls``, checked.

    Unknown keys and tables are errors (a typo must not pass for a default);
    a top-level key that only another component reads is ignored here.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{CONFIG_VARIABLE}: cannot read {path!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    everyone = _all_fields()
    own = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []

    def take(table: Mapping[str, Any], prefix: str, fields: Mapping[str, Any], apply: bool) -> None:
        for key, value in table.items():
            where = f"{path}: {prefix}{key}"
            try:
                if key not in fields:
                    close = difflib.get_close_matches(key, list(fields), 1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise ConfigError(f"{where}: not a setting{hint}")
                checked = _from_file(value, fields[key], where)
                if apply and key in own:
                    values[key] = checked
            except ConfigError as exc:
                errors.append(str(exc))

    top = {key: value for key, value in data.items() if not isinstance(value, dict)}
    take(top, "", everyone, True)
    for name, table in data.items():
        if not isinstance(table, dict):
            continue
        if name not in SECTIONS:
            close = difflib.get_close_matches(name, list(SECTIONS), 1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            errors.append(f"{path}: [{name}] is not a component{hint}")
            continue
        # Another component's table is checked as well (the same answer from
        # every component), but only this component's is applied.
        section = SECTIONS[name]
        take(table, f"[{name}] ", typing.get_type_hints(section), issubclass(cls, section))
    if errors:
        raise ConfigError("; ".join(errors), errors)
    return values


def load(
    cls: type[S],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Build ``cls`` from defaults, the config file, ``LIVECOMMENTS_*`` and non-None overrides."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []
    if env.get(CONFIG_VARIABLE):
        try:
            values.update(read_config_file(env[CONFIG_VARIABLE], cls))
        except ConfigError as exc:
            errors += exc.problems
    for field in dataclasses.fields(cls):
        key = ENV_PREFIX + field.name.upper()
        try:
            if key in env and key + "_FILE" in env:
                raise ConfigError(f"{key} and {key}_FILE are both set: give one")
            if key in env:
                values[field.name] = _convert(env[key], hints[field.name], field.name)
            elif key + "_FILE" in env:
                raw = _read_secret(key + "_FILE", env[key + "_FILE"])
                values[field.name] = _convert(raw, hints[field.name], field.name)
            if overrides and overrides.get(field.name) is not None:
                values[field.name] = _convert(overrides[field.name], hints[field.name], field.name)
        except ConfigError as exc:
            errors.append(str(exc))  # go on: one answer names every bad value
    if errors:
        raise ConfigError("; ".join(errors), errors)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a check in __post_init__
        raise ConfigError(str(exc)) from None


# Read by the command line itself, not by a settings class.
CLI_VARIABLES = frozenset({"LIVECOMMENTS_NAMESPACE", "LIVECOMMENTS_PORT_RANGE", CONFIG_VARIABLE})


def known_variables() -> frozenset[str]:
    """Every ``LIVECOMMENTS_*`` name some process reads (and its ``_FILE`` form)."""
    names = set(CLI_VARIABLES)
    for cls in (BackendSettings, RTMSSettings, DispatcherSettings, CommentServiceSettings):
        for field in dataclasses.fields(cls):
            names.add(ENV_PREFIX + field.name.upper())
            names.add(ENV_PREFIX + field.name.upper() + "_FILE")
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``LIVECOMMENTS_*`` variables no process reads (a typo?), each with a close known name."""
    env = os.environ if environ is None else environ
    known = known_variables()
    unknown = sorted(key for key in env if key.startswith(ENV_PREFIX) and key not in known)
    return [(key, next(iter(difflib.get_close_matches(key, known, 1)), None)) for key in unknown]


def default_node_id(kind: str, port: int) -> str:
    return f"{kind}-{socket.gethostname()}-{port}"
