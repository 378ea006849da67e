"""What browsers need from the comment service: CORS, the viewer page's CSP, security headers.

CORS: pages on the configured origins (``cors_origins``, plus the service's own
``public_url``) may call the API. A preflight (``OPTIONS`` with
``Access-Control-Request-Method`` on an /api route) is answered 204 with the
route's methods and the request headers the API reads; every /api answer,
errors included, names the origin back (exactly one value) so a page can read
error codes and ``Retry-After``. Other origins get no CORS headers at all.

The viewer page has one inline script and one inline style, and loads the client
library (``static/livecomments.js``) from this service: its Content-Security-Policy
allows exactly those, the inline ones by their SHA-256 (computed once, when the
page is loaded at start-up) and the library as ``'self'``, and ``connect-src`` allows the API and
the RTMS nodes' origins (the page opens its EventSource there after the
stream endpoint's 307). The page reads the same origins from a ``<meta>`` tag
and follows a ``moved`` event only to one of them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-ID"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate, X-Request-ID"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight answer
# Everything that is not the page is data: it may load nothing and be framed nowhere.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

# An origin as CSP and the page's check accept it: scheme, host (or a "*." host
# wildcard, or a bracketed IPv6 address) and an optional port; nothing else, so
# a value cannot smuggle another directive into the policy.
_ORIGIN = re.compile(
    r"^https?://(\*\.)?([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$"
)
# A source list for frame-ancestors: keywords and origins, separated by spaces.
_SOURCES = re.compile(
    r"^('none'|'self'|https?://[A-Za-z0-9.*:\[\]-]+)( +('self'|https?://[A-Za-z0-9.*:\[\]-]+))*$"
)
_META = '<meta name="livecomments-rtms-origins" content="">'
# The client library (static/livecomments.js), the one script the page loads by URL.
LIBRARY_PATH = "/livecomments.js"
LIBRARY_TAG = f'<script src="{LIBRARY_PATH}"></script>'
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """The origin (``scheme://host[:port]``) of a URL, or None if it has none we accept."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        origin += f":{port}"
    return origin if _ORIGIN.match(origin) else None


def check_origins(origins: Iterable[str], name: str) -> tuple[str, ...]:
    """``origins`` unchanged, or ValueError naming the first malformed one."""
    out = tuple(origins)
    for origin in out:
        if not _ORIGIN.match(origin):
            raise ValueError(f"{name}: {origin!r} is not an origin (scheme://host[:port])")
    return out


def check_frame_ancestors(value: str) -> str:
    if not _SOURCES.match(value.strip()):
        raise ValueError(f"frame_ancestors: {value!r} is not a CSP source list")
    return value.strip()


def cors_headers(allowed: Iterable[str], origin: str | None) -> dict[str, str]:
    """``Access-Control-Allow-Origin`` (and ``Vary``) for a request from ``origin``."""
    allowed = tuple(allowed)
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin and origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"}  # the answer still depends on the Origin (for caches)


class Cors:
    """The origins whose pages may call the API: the configured ones and the service's own."""

    def __init__(self, configured: Iterable[str], public_url: str) -> None:
        configured = tuple(configured)
        own = origin_of(public_url)
        self.origins = (
            check_origins((o for o in configured if o != "*"), "cors_origins")
            + (() if own is None else (own,))
            + (("*",) if "*" in configured else ())
        )

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from ``origin``."""
        return cors_headers(self.origins, origin)


def preflight_headers(cors: Mapping[str, str], methods: Iterable[str]) -> dict[str, str]:
    """A preflight's answer headers; none but ``Vary`` unless the origin is allowed."""
    headers = dict(cors)
    if "Access-Control-Allow-Origin" in cors:
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(sorted(set(methods))),
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
            }
        )
    return headers


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class ViewerPage:
    """The viewer page and its Content-Security-Policy, read once at start-up."""

    def __init__(self, path: Path, frame_ancestors: str) -> None:
        text = path.read_text(encoding="utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
        styles = re.findall(r"<style>(.*?)</style>", text, re.S)
        markup = re.sub(r"<(script|style)>.*?</\1>", "", text, flags=re.S).replace(LIBRARY_TAG, "")
        if re.search(r"<script\b|\son[a-z]+\s*=|\sstyle\s*=", markup, re.I):
            # Anything else inline would be refused by the policy built here.
            raise ValueError(f"{path}: only one inline <script> and <style> are allowed")
        if _META not in text:
            raise ValueError(f"{path}: the page lacks {_META}")
        self._head, self._tail = text.split(_META, 1)
        # The client library (LIBRARY_PATH, served by us) and the inline script.
        library = "'self' " if LIBRARY_TAG in text else ""
        self._script_src = (library + " ".join(_digest(s) for s in scripts)).strip() or "'none'"
        self._style_src = " ".join(_digest(s) for s in styles) or "'none'"
        self._frame_ancestors = check_frame_ancestors(frame_ancestors)

    def render(self, stream_origins: Iterable[str]) -> tuple[bytes, str]:
        """The page for the given RTMS origins, and its Content-Security-Policy."""
        origins = " ".join(dict.fromkeys(stream_origins))
        meta = f'<meta name="livecomments-rtms-origins" content="{html.escape(origins)}">'
        csp = "; ".join(
            [
                "default-src 'none'",
                f"script-src {self._script_src}",
                f"style-src {self._style_src}",
                f"connect-src 'self' {origins}".rstrip(),
                "img-src 'self' data:",
                "base-uri 'none'",
                "form-action 'self'",
                f"frame-ancestors {self._frame_ancestors}",
            ]
        )
        return (self._head + meta + self._tail).encode(), csp
