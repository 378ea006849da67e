"""The product's face: the ``livecomments`` command, operator commands, and the local
cluster launcher. It sits on top of every component and nothing imports it."""

from livecomments.cli.main import main

__all__ = ["main"]
