# Files at rest: what a controller creates is its user's alone, and a config file that holds
# secrets must be too.
#
# Why: volumes hold the hosts' data, change maps and journals say where it changed and hold
# unshipped writes, the pair state is the truth of the whole system, and a config holds the
# shared secrets of hosts and peers. On a machine with other users none of it is theirs to
# read or change (DESIGN.md section 6, "At rest"; docs/security.md).
#
# Rules this module keeps:
# - Files the controller creates are created FILE_MODE (0600) and folders FOLDER_MODE (0700),
#   by the mode given to open/mkdir, so there is never a moment with wider permissions. The
#   umask can only narrow them.
# - Files and folders that already exist are never chmod-ed: they are the administrator's, who
#   may share a volume file on purpose. The controller logs one warning naming them and the fix.
# - A config file that holds a secret and is accessible by group or others is refused, as ssh
#   refuses such a private key: the secret may already be known, and the fix is the admin's.
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700
_GROUP_OTHERS: Final = 0o077  # any permission bit for group or others, as ssh checks a key


def make_folder(path: Path) -> None:
    """Create `path` (and missing parents) 0700; an existing folder is left as it is."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)


def fsync_folder(path: Path) -> None:
    """Make a folder's entries durable (a file created, renamed or deleted in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int) -> int:
    """os.open creating the file 0600 when it does not exist yet."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def _secret_keys(data: dict[str, Any]) -> list[str]:
    """The key paths of every secret a controller config's TOML holds or names (hosts and
    peers: `secret`, refused anyway, or `secret_file`)."""
    found = []
    for section in ("hosts", "peers"):
        entries = data.get(section)
        if isinstance(entries, list):
            found += [
                f"{section}[{i}].{key}"
                for i, entry in enumerate(entries)
                if isinstance(entry, dict)
                for key in ("secret", "secret_file")
                if key in entry
            ]
    return found


def config_exposure(path: Path, data: dict[str, Any]) -> list[str]:
    """One problem when a config holding or naming secrets is accessible by group or
    others."""
    secrets = _secret_keys(data)
    if not secrets:
        return []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []  # it was just read: a file that vanished since is the next reader's problem
    if not mode & _GROUP_OTHERS:
        return []
    shown = ", ".join(secrets[:3]) + (f" and {len(secrets) - 3} more" if len(secrets) > 3 else "")
    return [
        f"{path}: names secrets ({shown}) but is accessible by group or others "
        f"(mode {mode:04o}, expected 0600): run `chmod 600 {path}`"
    ]


def private_problem(path: Path, what: str) -> str | None:
    """A problem line when a file that must be private (a key, a secret) is accessible by
    group or others; None when it is private."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        return f"{path}: cannot read the {what}: {exc.strerror}"
    if mode & _GROUP_OTHERS:
        return (
            f"{path}: the {what} is accessible by group or others "
            f"(mode {mode:04o}, expected 0600): run `chmod 600 {path}`"
        )
    return None


def exposed(paths: Iterable[Path]) -> list[Path]:
    """The existing paths accessible by group or others (to warn about, never to chmod)."""
    out = []
    for path in paths:
        try:
            if stat.S_IMODE(path.stat().st_mode) & _GROUP_OTHERS:
                out.append(path)
        except OSError:
            continue
    return out


__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "config_exposure",
    "exposed",
    "make_folder",
    "open_private",
    "private_problem",
]
