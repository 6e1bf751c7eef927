# What several commands share: the catalog option, the --json flag, progress on stderr.
#
# Every command module imports this one to declare its options, `--help` included, so it
# imports click alone at the top: the catalog (SQLAlchemy) and rich are imported when a
# catalog is opened or a progress bar made (cli/lazy.py says why).
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from remcopy.catalog import Catalog
    from remcopy.groups.progress import OperationProgress

CATALOG_DEFAULT = "remcopy.db"
F = TypeVar("F", bound=Callable[..., Any])


def catalog_option(f: F) -> F:
    return click.option(
        "--catalog",
        "catalog_location",
        envvar="REMCOPY_CATALOG",
        default=CATALOG_DEFAULT,
        show_default=True,
        help="Catalog: an SQLite file or a postgresql:// URL (env REMCOPY_CATALOG).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


@contextmanager
def open_catalog(location: str, *, create: bool = False) -> Iterator[Catalog]:
    """The catalog at `location`, closed on exit.

    Only commands that store something new pass `create=True` (host add, scan, group
    define/add/load, catalog init, the TUI). Every other command needs an existing catalog:
    a mistyped --catalog or REMCOPY_CATALOG is CatalogNotFound (exit 2), naming the path and
    where it came from, and nothing is created (docs/operations.md).
    """
    from remcopy.catalog import Catalog, CatalogNotFound

    try:
        catalog = Catalog.open(location, create=create)
    except CatalogNotFound as exc:
        raise CatalogNotFound(exc.location, exc.why, source=_location_source()) from None
    try:
        yield catalog
    finally:
        catalog.close()


def _location_source() -> str | None:
    """Where the command's catalog location came from: the option, the variable, or neither."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    source = ctx.get_parameter_source("catalog_location")
    if source is click.core.ParameterSource.ENVIRONMENT:
        return "REMCOPY_CATALOG"
    if source is click.core.ParameterSource.COMMANDLINE:
        return "--catalog"
    if source is click.core.ParameterSource.DEFAULT:
        return f"the default, {CATALOG_DEFAULT} in the current folder"
    return None


def _progress(*columns: str) -> Progress:
    """A transient rich progress display on stderr, shown only on a terminal outside CI:
    a description, a bar, then `columns` as text, then the time elapsed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from remcopy.cli.output import stderr

    description, *rest = columns
    return Progress(
        TextColumn(description),
        BarColumn(),
        *(TextColumn(text) for text in rest),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal or bool(os.environ.get("CI")),
    )


class ControllerProgress:
    """One progress bar per controller on stderr (only on a terminal)."""

    def __init__(self) -> None:
        self._progress = _progress("{task.description:<12}", "{task.completed}/{task.total}")
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ControllerProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def update(self, controller: str, done: int, total: int) -> None:
        task = self._tasks.get(controller)
        if task is None:
            task = self._tasks[controller] = self._progress.add_task(controller, total=total)
        self._progress.update(task, completed=done, total=total)


class CopyProgress:
    """Copy progress of a group operation on stderr (only on a terminal): one bar for all
    tracks, and one per pair for the first few pairs still copying."""

    PAIR_BARS_MAX = 8

    def __init__(self) -> None:
        self._progress = _progress("{task.description:<14}", "{task.completed}/{task.total} tracks")
        self._total: TaskID | None = None
        self._pairs: dict[str, TaskID] = {}

    def __enter__(self) -> CopyProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def __call__(self, progress: OperationProgress) -> None:
        if self._total is None:
            self._total = self._progress.add_task(f"{progress.op} (all)", total=0)
        self._progress.update(
            self._total, completed=progress.copied_tracks, total=progress.total_tracks
        )
        for pair in progress.pairs:
            task = self._pairs.get(pair.pair.name)
            if task is None:
                if pair.done or len(self._pairs) >= self.PAIR_BARS_MAX:
                    continue
                task = self._pairs[pair.pair.name] = self._progress.add_task(
                    pair.pair.name, total=pair.total_tracks
                )
            self._progress.update(task, completed=pair.copied_tracks, total=pair.total_tracks)
            if pair.done:
                self._progress.remove_task(task)
                del self._pairs[pair.pair.name]
