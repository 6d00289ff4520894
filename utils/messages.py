"""Exceptions as the one line a user reads."""
from __future__ import annotations


def one_line(exc: BaseException) -> str:
    # KeyError's str() is the repr of its argument; the argument itself is the message.
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
