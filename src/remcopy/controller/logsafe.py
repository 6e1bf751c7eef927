# Text from the network as a log line may show it.
#
# Why: names and messages a client sends (a HELLO name, an NBD export name, a certificate's
# name) end up in the controller's log. A newline in one would start a forged log line, and a
# terminal escape would move an operator's cursor (DESIGN.md section 6). The rule itself is
# logformat.escape_text, which the log formatter also applies to whole lines.
from __future__ import annotations

from remcopy.logformat import escape_text


def escape_name(name: str) -> str:
    """A name from the network as a log may show it: unchanged when every character is
    printable, else with escapes (`\\n`, `\\x1b`, `\\u2028`) and a backslash doubled, so a
    name can never start a line of its own or move the terminal's cursor."""
    return escape_text(name)
