"""Log lines a client cannot forge: one record is one line, whatever text a client sent.

Client-given text reaches the log in several places (a Shutdown reason, a key in an error, an
exception's message). A newline in it would start what looks like a new record ("...\\n2026-01-01
00:00:00 INFO metastore: stopped"), and a terminal escape could rewrite what an operator sees.
`LineFormatter` escapes every control character in the message, and indents every line of a
traceback, so only the first line of a record starts at column 0 and no text of a client's can
begin a line of its own. `escape` is there for text kept elsewhere (the shutdown report).
"""

from __future__ import annotations

import logging
import re
from typing import Any

# C0 controls, DEL, and the C1/Unicode line breaks some viewers honour.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
TRACE_INDENT = "  | "


def _sub(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape(text: str, limit: int = 0) -> str:
    """text with every control character written as an escape; cut to `limit` chars (0: no cut)."""
    if limit and len(text) > limit:
        text = text[:limit] + f"...({len(text) - limit} more)"
    return _CONTROL.sub(_sub, text)


def _indented(block: str) -> str:
    """A multi-line block (a traceback), each line escaped and indented under its record."""
    return "\n".join(TRACE_INDENT + escape(line) for line in block.splitlines())


class LineFormatter(logging.Formatter):
    """A Formatter whose records are one line each, plus indented traceback lines."""

    def format(self, record: logging.LogRecord) -> str:
        # exc_text is a cache another handler may have filled with the raw traceback: ours is made
        # anew, and every field is put back for the other handlers
        msg, args, exc_text = record.msg, record.args, record.exc_text
        record.msg, record.args, record.exc_text = escape(record.getMessage()), None, None
        try:
            return super().format(record)
        finally:
            record.msg, record.args, record.exc_text = msg, args, exc_text

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))
