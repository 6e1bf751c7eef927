# One place where sync code enters the event loop (STYLE.md section 5): the CLI and the
# controller daemon call `run()`, which uses uvloop when it is installed (DESIGN.md section 9:
# about 2x the small-request rate on loopback here) and plain asyncio otherwise.
from __future__ import annotations

import asyncio
import ctypes
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


# Frames of up to 16 MiB are allocated and freed all the time. glibc returns large blocks to
# the kernel at once and faults fresh pages in on the next allocation, which was the largest
# single cost on the 64 KiB path (bench/io.py). Keeping freed memory in the process (up to
# these bounds) removes that churn.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Keep large freed blocks in the heap (glibc only); returns whether it applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    ok &= mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    ok &= mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    return bool(ok)


def run(main: Coroutine[Any, Any, T]) -> T:
    tune_malloc()
    if uvloop_available():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    return "uvloop" if uvloop_available() else "asyncio"
