# `remcopy events`: the controllers' events as JSON lines, recent ones or followed live.
#
# A front end only (STYLE.md section 8): finding the controllers, asking them and following
# them across restarts is remcopy.host.follow's; this file parses options and prints.
from __future__ import annotations

import click

from remcopy.cli.common import catalog_option


@click.command("events")
@click.option("--group", "group_name", help="Only events about this group's pairs.")
@click.option("--host", "host_name", help="Reach the controllers of this host (default: all).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen.")
@click.option(
    "--last",
    type=click.IntRange(min=0),
    help="Start with the last N events of each controller (after --group; default: all kept).",
)
@catalog_option
def events(
    group_name: str | None,
    host_name: str | None,
    follow: bool,
    last: int | None,
    catalog_location: str,
) -> None:
    """Print the controllers' events, one JSON line each (`"schema": 1`).

    Every controller the catalog's hosts reach is asked (one host's with --host). Without
    --follow: the events each controller keeps, oldest first, then exit (1 if a controller
    could not be asked). With --follow: then every new event as it happens, until Ctrl-C; a
    controller that restarts is reconnected to (said on stderr) and resumed after the last
    event seen, so no event is lost or printed twice (each controller numbers its events:
    `serial` and `seq`).

    \b
    Example:
      remcopy events --follow
      remcopy events --group PAYROLL --host hosta --last 20
    """
    from remcopy import aio
    from remcopy.cli.common import open_catalog
    from remcopy.errors import EventsNotAsked
    from remcopy.events import Event
    from remcopy.host import follow as following

    with open_catalog(catalog_location) as catalog:
        shown = (
            following.group_filter(catalog, group_name)
            if group_name is not None
            else following.EventFilter()
        )
        channels = following.channels_of(following.event_sources(catalog, host_name))

    def printed(event: Event) -> None:
        from remcopy.cli.output import emit_json_line

        emit_json_line(event.to_json())

    def retrying(controller: str, pause_s: float, why: str) -> None:
        from remcopy.cli.output import stderr

        stderr.print(
            f"events: {controller}: {why}: connecting again in {pause_s:.1f} s",
            markup=False,
            highlight=False,
        )

    if follow:
        aio.run(
            following.follow(channels, on_event=printed, on_retry=retrying, shown=shown, last=last)
        )
        return
    found, failed = aio.run(following.recent(channels, shown))
    for event in following.last_of_each(found, last):
        printed(event)
    if failed:
        raise EventsNotAsked(
            f"events: {len(failed)} of {len(channels)} controllers not asked: "
            + "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
        )
