"""livecomments: live comments for live video.

This package holds what several components share (settings, ids, the event
model, store access, errors, the process launcher and the CLI). The components
themselves live in the top-level packages ``comment_service``, ``dispatcher``,
``rtms`` and ``coord``.
"""

__version__ = "0.1.0"
