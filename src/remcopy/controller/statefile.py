# Durable small documents: write-then-rename with fsync, so a crash leaves the old or the new.
#
# Why: a controller's pair states are the truth of the whole system (the catalog only caches
# them). A state change is committed when, and only when, the new document is renamed into
# place and the folder is synced; a kill -9 at any moment leaves either the old document or
# the new one, never a torn mix.
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from remcopy.errors import ConfigError, VolumeIOError


def write_atomic(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` with the JSON document, durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    # Compact: with `indent` the json module falls back to its pure-Python encoder, ten times
    # slower; a group suspend writes this document for 1,250 devices twice per controller
    # (armed, then suspended), on the path between T and the answer. `python -m json.tool`
    # shows it indented.
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # atrest.FILE_MODE
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise VolumeIOError(f"state file {path}: cannot write: {exc.strerror}") from exc


def read(path: Path) -> dict[str, Any] | None:
    """The document at `path`, or None when there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VolumeIOError(f"state file {path}: cannot read: {exc.strerror}") from exc
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"state file {path}: damaged: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"state file {path}: damaged: not a JSON object")
    return document
