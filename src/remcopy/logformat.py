# Log records as single lines: text for people, or JSON lines for log collectors.
#
# Why: a controller's log is read with grep, tail, journalctl and log shippers, all of which
# take a line for a record. A record that spans lines (a traceback, a batch of event lines, a
# name from the network holding a newline) breaks them: the continuation lines have no time
# or level, and a peer could forge a whole record by putting a newline and a fake line into
# its name (DESIGN.md section 6: names from the network are escaped in logs).
#
# Rules this module keeps:
# - Every record is one line: in text form, a newline or a control character in it is escaped
#   (`\n`, `\x1b`, `\u2028`); a line of printable characters is left as it is. In JSON form
#   (log_format = "json"), json.dumps escapes them, and the line is ASCII.
# - A name from the network is escaped where it is put into a message (server.escape_name),
#   with its backslashes doubled, so a name cannot fake an escape either.
from __future__ import annotations

import datetime
import json
import logging
from typing import Final, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"

_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_text(text: str, *, backslashes: bool = True) -> str:
    """`text` unchanged when every character is printable (and, with `backslashes`, none is
    a backslash); else each unprintable character written as its escape, and with
    `backslashes` every backslash doubled, so a literal one cannot fake an escape.

    Names from the network are escaped with `backslashes` where they are put into a message;
    a whole log line is escaped without, so a name already escaped is not escaped twice."""
    if text.isprintable() and not (backslashes and "\\" in text):
        return text
    return "".join(
        char if char.isprintable() and (char != "\\" or not backslashes) else _escape(char)
        for char in text
    )


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class OneLineFormatter(logging.Formatter):
    """The text form: `TIME LOGGER LEVEL MESSAGE`, a traceback included, on one line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return escape_text(super().format(record), backslashes=False)


class JsonLineFormatter(logging.Formatter):
    """The JSON form: one object per line with time (UTC), level, logger, message, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        document = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonLineFormatter() if log_format == "json" else OneLineFormatter()


def use(log_format: LogFormat) -> None:
    """Format every record of every handler of the root logger in this form."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(log_format))
