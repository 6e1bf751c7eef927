# `remcopy states`: the pair state machine printed from the table the code runs on.
from __future__ import annotations

import click

from remcopy.cli.output import emit_json, table
from remcopy.states import transition_rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def states(as_json: bool) -> None:
    """Print every pair state x action: the result, or the refusal message.

    \b
    Example:
      remcopy states
      remcopy states --json | jq '.[] | select(.action == "resume")'
    """
    rows = transition_rows()
    if as_json:
        emit_json(
            [
                {
                    "state": s.name,
                    "action": a.value,
                    "result": r.name if r else None,
                    "refused": r is None,
                    "message": text,
                }
                for s, a, r, text in rows
            ]
        )
        return
    table(
        "pair state machine",
        ["state", "action", "result", "note / refusal"],
        [(s.name, a.value, r.name if r else "refused", text) for s, a, r, text in rows],
    )
