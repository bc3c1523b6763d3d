"""Log lines a client cannot forge: control characters escaped, tracebacks indented."""

from __future__ import annotations

import io
import logging

from metastore_core.server.lifecycle import REASON_LIMIT, Lifecycle
from metastore_core.server.logline import TRACE_INDENT, LineFormatter, escape

FORGED = "bye\n2026-01-01 00:00:00,000 INFO metastore: stopped\r\x1b[2J\u2028x"


def _logged(emit: object) -> list[str]:
    out = io.StringIO()
    # a plain handler first, as pytest's or a library's: it caches the raw traceback on the record
    plain = logging.StreamHandler(io.StringIO())
    handler = logging.StreamHandler(out)
    handler.setFormatter(LineFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test.logline")
    log.addHandler(plain)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        emit(log)  # type: ignore[operator]
    finally:
        log.removeHandler(handler)
        log.removeHandler(plain)
    return out.getvalue().splitlines()


def test_a_message_with_client_text_stays_one_line() -> None:
    lines = _logged(lambda log: log.info("shutdown requested: %s", FORGED))
    assert lines == [
        "INFO test.logline: shutdown requested: "
        "bye\\n2026-01-01 00:00:00,000 INFO metastore: stopped\\r\\x1b[2J\\u2028x"
    ]


def test_traceback_lines_are_indented_under_their_record() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError(FORGED)
        except ValueError:
            log.exception("handler failed")

    lines = _logged(emit)
    assert lines[0] == "ERROR test.logline: handler failed"
    assert all(line.startswith(TRACE_INDENT) for line in lines[1:])
    assert any("INFO metastore: stopped" in line for line in lines[1:])  # kept, but not a record
    assert "\x1b" not in "".join(lines)


def test_escape_cuts_long_text() -> None:
    assert escape("a\tb") == "a\\tb"
    assert escape("x" * 50, 10) == "x" * 10 + "...(40 more)"


async def test_shutdown_reason_kept_escaped_and_short() -> None:
    lc = Lifecycle(1.0)
    assert lc.request(FORGED + "y" * 1000)
    assert "\n" not in lc.reason and "\x1b" not in lc.reason
    assert len(lc.reason) < REASON_LIMIT + 40
