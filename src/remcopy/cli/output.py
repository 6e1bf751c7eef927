# How the CLI reports: JSON on stdout with --json (stable keys), rich tables otherwise;
# progress and logs on stderr. Colour only on a terminal; rich honours NO_COLOR.
#
# Rule: with --json, `emit_json` is the only thing that writes to stdout, exactly once per
# command; rich, logging, warnings and progress write to stderr.
#
# Versioning: every JSON object the CLI prints carries `"schema": SCHEMA_VERSION`, added here and
# nowhere else; a change that renames or removes a key raises it. Documents that are lists (the
# listings: `group list`, `host list`, `map show`, ...) are printed as they were: a list has no
# place for a key, and wrapping them would break every consumer at once (docs/operations.md).
# A command that fails with --json before printing its document prints an error document
# instead (`error_json`, called by cli/main.py), so a script always reads one document.
from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Sequence
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.table import Table

SCHEMA_VERSION: Final = 1
_emitted = False  # this process printed its JSON document already

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def emit_json(document: Any) -> None:
    """Write `document` as the one JSON document on stdout, whole, whatever stdout is.

    The only writer of `--json` output. It writes the encoded bytes to file descriptor 1
    itself, in a loop, because Python's own stdout loses data silently when that descriptor
    is non-blocking: O_NONBLOCK belongs to the open file description, which every process
    holding the pipe or socket shares, and any of them may set it (an event loop that
    registers the descriptor does). Then a 1.8 MB write stops at what the buffer holds
    (219,264 bytes on a Unix socket here), `sys.stdout.write` raises nothing and the command
    exits 0 with the document cut short: how bench/groups.py once read a 10,000-pair
    `group suspend --json` that ended at line 8127. Here a short write continues, and a
    full buffer is waited on, as a blocking write would wait.
    """
    global _emitted
    if isinstance(document, dict):
        document = {**document, "schema": SCHEMA_VERSION}
    _emitted = True
    _write_stdout((json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _write_stdout(data: bytes) -> None:
    """All of `data` on stdout, after what Python's stdout holds (see emit_json)."""
    sys.stdout.flush()  # nothing else belongs on stdout; if something was, it goes first
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: no descriptor
        sys.stdout.write(data.decode())
        sys.stdout.flush()
        return
    _write_all(fd, data)


def reset() -> None:
    """Forget that a document was printed (`main` runs once per process, tests more often)."""
    global _emitted
    _emitted = False


def error_json(message: str, exit_code: int) -> None:
    """With --json, a command that fails before its document prints this one instead:
    `{"schema": 1, "error": MESSAGE, "exit_code": CODE}` (the message also goes to stderr)."""
    if not _emitted:
        emit_json({"error": message, "exit_code": exit_code})


def emit_json_line(document: dict[str, Any]) -> None:
    """One JSON object on one line of stdout, written at once (a stream of documents, as
    `remcopy events` prints them; each carries its own `schema`)."""
    _write_stdout((json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode())


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`, blocking or not (BrokenPipeError goes to the caller)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    out = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    stdout.print(out)


def print_wide(renderable: object) -> None:
    """Print on stdout; off a terminal (a pipe, a file) at the width the content needs, as a
    pipe has no width to fit and rich would otherwise fold a wide table into 80 columns."""
    if stdout.is_terminal:
        stdout.print(renderable)
    else:
        Console(soft_wrap=True, width=_PIPE_WIDTH, no_color=True).print(renderable)


_PIPE_WIDTH: Final = 1000


def fail(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def say(text: str) -> None:
    """One line of plain text on stdout: no markup, no highlighting."""
    stdout.print(text, markup=False, highlight=False)
