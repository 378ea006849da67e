"""The Lua scripts, one ``.lua`` file each in ``scripts/``, registered by name.

A script's name is its file name without ``.lua``, prefixed by the module that runs
it (``sequencer_next``, ``outbox_claim``), and its comments say what its KEYS and
ARGV are and what it returns. A ``lib_*.lua`` file is a library: local functions
that several scripts run inside their own step (``lib_next_seq``: the admission of
a post takes its seq in the same call). A script names the libraries it uses in a
line ``-- include: lib_a lib_b``, and the loader puts their text before its own
(Lua wants a local function defined before its use). Libraries include nothing.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LIBRARY = "lib_"  # the prefix of a library's name
_PACKAGE = __name__.rpartition(".")[0]
_INCLUDE = re.compile(r"^-- include:(.*)$", re.MULTILINE)


@functools.cache
def files() -> dict[str, str]:
    """Every ``.lua`` file of ``scripts/`` (libraries too), by name."""
    folder = resources.files(_PACKAGE).joinpath("scripts")
    return {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }


def names() -> list[str]:
    """The scripts that can be registered (not the libraries), sorted."""
    return sorted(name for name in files() if not name.startswith(LIBRARY))


def includes(name: str) -> list[str]:
    """The libraries ``name`` includes, in order."""
    return [lib for line in _INCLUDE.findall(files()[name]) for lib in line.split()]


def source(name: str) -> str:
    """The text Redis runs for ``name``: its libraries, then the script."""
    if name.startswith(LIBRARY) or name not in files():
        raise KeyError(f"no Lua script {name!r} in {_PACKAGE}/scripts")
    return "".join(files()[lib] for lib in includes(name)) + files()[name]


def register(redis: Redis, name: str) -> AsyncScript:
    """The script ``name``, registered on ``redis`` (run by EVALSHA, loaded on first use)."""
    return redis.register_script(source(name))
