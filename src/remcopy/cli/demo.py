# `remcopy demo`: the disaster-recovery drill, narrated, with a summary table.
from __future__ import annotations

import asyncio
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click

from remcopy import aio
from remcopy.cli.common import ControllerProgress
from remcopy.cli.output import say, table


@click.command()
@click.option(
    "--pairs",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Pairs in the drill's copy group.",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build the world in this folder and keep it (see the README walk-through).",
)
@click.option("--seed", type=int, help="Random seed (printed when chosen).")
def demo(pairs: int, keep: Path | None, seed: int | None) -> None:
    """Run a whole disaster-recovery drill on real controller processes.

    Builds a two-site world, scans two hosts, defines a group by volser, establishes it, runs
    a dependent-write workload, suspends at a prospective T, verifies the secondary, takes and
    verifies a shadow copy, resumes, cuts a replication link (freeze), loses the primary site,
    recovers and proves no acknowledged write was lost, and fails back. Exit 0 only if every
    check passed.

    \b
    Example:
      remcopy demo --pairs 200
      remcopy demo --keep /tmp/remcopy-demo
    """
    from remcopy.demo.drill import DrillFailed, Step, run_drill  # the whole system: only here

    seed = seed if seed is not None else random.randrange(1 << 31)
    root = keep or Path(tempfile.mkdtemp(prefix="remcopy-demo-"))
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)

    async def drill() -> list[Step]:
        # SIGTERM ends the drill as Ctrl-C does: its tasks are cancelled and it stops every
        # controller process it started before the command exits.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run_drill(root, pairs=pairs, seed=seed, say=say, progress=bars.update)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        with ControllerProgress() as bars:
            steps = aio.run(drill())
    except (KeyboardInterrupt, asyncio.CancelledError) as stopped:
        say("demo: stopped; every controller process it started was stopped")
        sys.exit(130 if isinstance(stopped, KeyboardInterrupt) else 143)  # 128 + the signal
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    table(
        "summary",
        ["step", "pairs", "seconds", "result"],
        [(s.name, s.pairs or "", f"{s.seconds:.3f}", "ok" if s.ok else "FAILED") for s in steps],
    )
    failed = [s for s in steps if not s.ok]
    if failed:
        raise DrillFailed(
            f"demo: {len(failed)} checks failed: " + ", ".join(s.name for s in failed)
        )
    say(
        f"demo passed: every check ok (seed {seed})"
        + (f"; the world is kept in {keep}" if keep else "")
    )
