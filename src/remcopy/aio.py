# One place where sync code enters the event loop (STYLE.md section 5): the CLI and the
# controller daemon call `run()`, which uses uvloop when it is installed (DESIGN.md section 9:
# about 2x the small-request rate on loopback here) and plain asyncio otherwise.
from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_available() -> bool:
    if os.environ.get("REMCOPY_LOOP", "").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T]) -> T:
    if uvloop_available():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    return "uvloop" if uvloop_available() else "asyncio"
