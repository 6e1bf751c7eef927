# Log records as one line each: the text form escapes newlines, control characters and
# backslashes (so an escape cannot be faked); the JSON form is one object per line.
from __future__ import annotations

import json
import logging
import sys

from remcopy.logformat import JsonLineFormatter, OneLineFormatter, escape_text


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord(
        "remcopy.controller", logging.WARNING, __file__, 1, message, args, info
    )


def test_escape_text_leaves_printable_text_and_escapes_the_rest() -> None:
    """Printable text is unchanged; newlines, escapes, line separators and backslashes are
    written as escapes, with the backslash doubled so a literal one cannot fake an escape."""
    assert escape_text("host a-1.é") == "host a-1.é"
    assert escape_text("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert escape_text("a\x1b[31m\u2028\U000e0001") == "a\\x1b[31m\\u2028\\U000e0001"
    assert escape_text("a\\nb") == "a\\\\nb"
    # A whole log line: a name escaped where it was put in is not escaped twice.
    assert escape_text("name a\\nb\n", backslashes=False) == "name a\\nb\\n"


def test_OneLineFormatter_writes_a_multi_line_message_and_its_traceback_on_one_line() -> None:
    """A message of several lines, a name with a newline, and a traceback: one line."""
    line = OneLineFormatter().format(_record("problems:\n  one\n  %s", "evil\nname", exc=True))
    assert "\n" not in line
    assert "WARNING problems:\\n  one\\n  evil\\nname\\nTraceback" in line
    assert "ValueError: bad\\nvalue" in line


def test_JsonLineFormatter_writes_one_object_per_line() -> None:
    """One JSON object on one ASCII line: time, level, logger, message, exception."""
    line = JsonLineFormatter().format(_record("a\n%s", "é\u2028", exc=True))
    assert "\n" not in line and line.isascii()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "warning",
        "remcopy.controller",
        "a\né\u2028",
    )
    assert doc["time"].endswith("Z") and "ValueError: bad\nvalue" in doc["exception"]
