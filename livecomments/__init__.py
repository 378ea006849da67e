"""livecomments: live comments for live video.

The package is layered; each floor imports only the floors below it
(``make lint`` checks it, see ``[tool.importlinter]`` in pyproject.toml):

- ``livecomments.cli``: the ``livecomments`` command, operator tools, the local cluster;
- ``livecomments.comment_service``, ``livecomments.dispatcher``, ``livecomments.rtms``:
  the three components, independent of each other;
- ``livecomments.coord``: ZooKeeper coordination (membership, registry, placement);
- ``livecomments.kernel``: settings, ids, events, errors, store, sequencing, gRPC.
"""

__version__ = "0.1.0"
