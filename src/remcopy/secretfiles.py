# Shared secrets in files: made with enough randomness, read only from private files.
#
# Why: a shared secret proves a host or peer inside TLS (the second factor next to its
# certificate, docs/security.md). A secret typed by a person can be guessed; one on a command
# line is seen by every user in `ps`; one in a file others can read is not a secret. So a secret
# is made by `remcopy secret new` (SECRET_BYTES of os.urandom, hex), kept in a 0600 file, and a
# config names the file (`secret_file = ...`).
#
# Rules this module keeps:
# - A secret file readable or writable by group or others is refused, naming the fix
#   (`chmod 600`), as ssh refuses such a key.
# - A secret shorter than SECRET_MIN_BYTES of text is refused: it was not made here.
# - A secret's value never appears in an error message.
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from remcopy.controller import atrest
from remcopy.errors import ConfigError, InputError

SECRET_BYTES: Final = 32  # 256 random bits, written as 64 hex digits
SECRET_MIN_BYTES: Final = 16  # at least 128 bits' worth of text
SECRET_ENV_VAR: Final = "REMCOPY_SECRET"


def new(path: Path, *, force: bool = False) -> Path:
    """Write a fresh secret to `path`, created 0600 (refuses an existing file unless force)."""
    if path.exists() and not force:
        raise InputError(f"{path}: exists already (use --force to replace it)")
    if path.parent != Path():
        atrest.make_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, atrest.FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), atrest.FILE_MODE)
        out.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return path


def check_text(text: str, source: str) -> str:
    value = text.strip()
    if len(value.encode()) < SECRET_MIN_BYTES:
        raise ConfigError(
            f"{source}: the secret is too short ({len(value.encode())} bytes, not shown; "
            f"expected at least {SECRET_MIN_BYTES}): make one with `remcopy secret new`",
            problems=[],
        )
    return value


def read(path: Path) -> str:
    """The secret in a private file; a file others may access is refused."""
    problem = atrest.private_problem(path, "secret file")
    if problem is not None:
        raise ConfigError(problem, problems=[problem])
    return check_text(path.read_text(encoding="utf-8"), str(path))


INLINE_REFUSED: Final = (
    "a config keeps no secret itself: write it to a 0600 file (`remcopy secret new --out "
    'FILE`) and name the file: secret_file = "FILE"'
)


def inline_problems(entries: object, where: str) -> list[str]:
    """One problem per TOML table in `entries` that holds its secret inline (`secret`
    without `secret_file`); the value is never shown."""
    if not isinstance(entries, list):
        return []
    return [
        f"{where}[{i}].secret: {INLINE_REFUSED}"
        for i, entry in enumerate(entries)
        if isinstance(entry, dict) and "secret" in entry and "secret_file" not in entry
    ]


def resolve_files(entries: object, base: Path, where: str) -> list[str]:
    """For each TOML table in `entries` with `secret_file` (relative to `base`), read the file
    into `secret` (in place) and make the path absolute; one problem per bad entry."""
    problems: list[str] = []
    if not isinstance(entries, list):
        return problems
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "secret_file" not in entry:
            continue
        key = f"{where}[{i}]" if where else ""
        prefix = f"{key}." if key else ""
        if "secret" in entry:
            problems.append(f"{prefix}secret_file: give secret_file or secret, not both")
            continue
        value = entry["secret_file"]
        if not isinstance(value, str):
            problems.append(f"{prefix}secret_file: expected a path (got {value!r})")
            continue
        path = base / value
        entry["secret_file"] = str(path)
        try:
            entry["secret"] = read(path)
        except ConfigError as exc:
            problems.append(f"{prefix}secret_file: {exc}")
        except OSError as exc:
            problems.append(f"{prefix}secret_file: cannot read {path}: {exc.strerror}")
    return problems
