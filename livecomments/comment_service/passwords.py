"""What a new password must be: long enough, not the username, not a common password.

The list of common passwords ships with the package (``data/common_passwords.txt``,
the 10,000 most common, from the zxcvbn package's frequency list; see its header).
Checked on sign-up and when an operator creates an admin, never on login: an
account made under older rules can still log in.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

from livecomments.kernel.errors import ValidationError

MIN_LENGTH = 10  # NIST SP 800-63B asks for at least 8; 10 puts most of the common list out of reach
MAX_LENGTH = 128
_LIST = Path(__file__).parent / "data" / "common_passwords.txt"
# Stripped from the end before the list is consulted: "dragon2024!" is "dragon".
_DECORATION = string.digits + string.punctuation + " "


class WeakPassword(ValidationError):
    code = "weak_password"


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lower case (read once per process)."""
    lines = _LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def weakness(username: str, password: str) -> str | None:
    """Why ``password`` is too weak for ``username``, or None if it is fine."""
    if len(password) < MIN_LENGTH:
        return f"passwords need at least {MIN_LENGTH} characters"
    folded = password.casefold()
    name = username.casefold()
    if name in folded or folded in name:
        return "the password must not contain the username"
    if len(set(folded)) < 4:
        return "the password repeats too few characters"
    common = common_passwords()
    base = folded.rstrip(_DECORATION)
    if folded in common or not base or base in common or folded.lstrip(_DECORATION) in common:
        return "this is one of the most common passwords"
    return None


def check_new_password(username: str, password: str) -> None:
    """Raise ``WeakPassword`` (400 ``weak_password``, saying why) for a weak new password."""
    reason = weakness(username, password)
    if reason is not None:
        raise WeakPassword(reason, details={"min_length": MIN_LENGTH})
