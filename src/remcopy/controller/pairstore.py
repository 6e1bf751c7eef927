# Durable pair state that costs what changed: one SQLite database in WAL mode per controller.
#
# Why: a controller's pair states are the truth of the whole system (the catalog only caches
# them), so a state change counts only once it is durable. The first store rewrote one JSON
# document holding every paired device, with fsync, for every change: a heartbeat failure on
# one device of a 1,250-device controller cost the same whole-file write as a suspend of all
# of them. Here a commit writes the rows of the devices it changes, in one transaction; WAL
# with synchronous=FULL makes it durable with one append and one fsync of the log.
#
# Rules this module keeps:
# - A commit is all-or-nothing (one transaction): after a crash the state is the last
#   committed one, never a mix (SQLite's own guarantee; the crash test kills a writer at
#   random points and checks).
# - Only devices that are paired (or were) have a row; a device returned to SIMPLEX with no
#   role loses its row.
# - The file is created 0600: pair states are the controller's own. SQLite creates the
#   `-wal` and `-shm` files with the database file's mode, so they are 0600 too (the test
#   checks).
# - A `pairs.json` left by an older controller (or written by a tool while the controller was
#   stopped) is imported whole at open, replacing what the database held, and renamed to
#   `pairs.json.imported`, so it is read once.
from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from remcopy.controller import statefile
from remcopy.errors import ConfigError, VolumeIOError

log = logging.getLogger("remcopy.controller")

STORE_FILE_NAME: Final = "pairs.db"
LEGACY_FILE_NAME: Final = "pairs.json"
STORE_FORMAT: Final = 2

# A pair document's fields (core.PairInfo.to_json) as columns, with the value a document
# from an older format lacks. Columns, not one JSON text per row: encoding 1,250 documents
# cost more than writing them (4.4 ms against 3.1 ms for the whole commit here).
COLUMNS: Final = (
    ("state", "SIMPLEX"),
    ("role", "none"),
    ("mode", None),
    ("peer_serial", 0),
    ("peer_device", 0),
    ("suspend_at_ns", 0),
    ("fence", "never"),
    ("consistency_group", False),
    ("group", ""),
    ("changed_at_ns", 0),
    ("change_cause", ""),
)
_NAMES: Final = tuple(name for name, _ in COLUMNS)
_COLUMN_LIST: Final = ", ".join(f"c_{name}" for name in _NAMES)
_INSERT: Final = (
    f"INSERT OR REPLACE INTO pairs (device, {_COLUMN_LIST}) "
    f"VALUES (?, {', '.join('?' for _ in _NAMES)})"
)
# An arm or disarm changes one column of rows that exist: one statement for all the devices of
# one T (their keys as one JSON list), where 1,250 documents cost 2-3 us each to write.
_ARM: Final = (
    "UPDATE pairs SET c_suspend_at_ns = ? WHERE device IN (SELECT value FROM json_each(?))"
)
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS pairs (device INTEGER PRIMARY KEY, {_COLUMN_LIST})",
    "CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, members TEXT NOT NULL)",
)


_FIELDS: Final = operator.itemgetter(*_NAMES)


def _row(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """A document's column values: picked in one call when it has every field (what
    PairInfo.to_json writes; a 1,250-device commit makes 1,250 rows), else each field or the
    value a document without it has (an older format)."""
    try:
        row: tuple[Any, ...] = _FIELDS(doc)
    except KeyError:
        return tuple(doc.get(name, default) for name, default in COLUMNS)
    return row


class PairStore:
    """The pair states of one controller's devices, committed by what changed."""

    def __init__(self, data_dir: Path, *, serial: int) -> None:
        self.path = data_dir / STORE_FILE_NAME
        self.legacy_path = data_dir / LEGACY_FILE_NAME
        self.serial = serial
        self.commits = 0
        self.rows_written = 0
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._add_new_columns()
        except sqlite3.Error as exc:
            raise VolumeIOError(f"pair state {self.path}: cannot open: {exc}") from exc
        except OSError as exc:
            raise VolumeIOError(f"pair state {self.path}: cannot create: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"<PairStore {self.path} commits={self.commits} rows={self.rows_written}>"

    def close(self) -> None:
        self._db.close()

    def _add_new_columns(self) -> None:
        """Add the columns a store made by an older controller lacks, each with the value a
        document without it has (its COLUMNS default): an older pairs.db opens as it was."""
        present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(pairs)")}
        for name, default in COLUMNS:
            if f"c_{name}" not in present:
                literal = "NULL" if default is None else repr(default)
                self._db.execute(f"ALTER TABLE pairs ADD COLUMN c_{name} DEFAULT {literal}")
                log.info("pair state %s: column %s added", self.path, name)

    # Reading...

    def load(self) -> tuple[dict[int, dict[str, Any]], dict[str, list[int]]]:
        """Every stored device's pair document and every group's members (importing a
        legacy pairs.json first, when there is one)."""
        self._import_legacy()
        try:
            serial = self._db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()
            if serial is not None and int(serial[0]) != self.serial:
                raise ConfigError(
                    f"pair state {self.path}: belongs to controller serial {serial[0]}, not "
                    f"{self.serial}: a data_dir holds one controller's state"
                )
            devices = {
                int(row[0]): dict(zip(_NAMES, row[1:], strict=True))
                for row in self._db.execute(f"SELECT device, {_COLUMN_LIST} FROM pairs")
            }
            for doc in devices.values():
                doc["consistency_group"] = bool(doc["consistency_group"])
            groups = {
                str(name): [int(m) for m in json.loads(members)]
                for name, members in self._db.execute("SELECT name, members FROM groups")
            }
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('serial', ?), ('format', ?)",
                (str(self.serial), str(STORE_FORMAT)),
            )
        except (sqlite3.Error, ValueError) as exc:
            raise ConfigError(f"pair state {self.path}: damaged: {exc}") from exc
        return devices, groups

    def _import_legacy(self) -> None:
        document = statefile.read(self.legacy_path)
        if document is None:
            return
        devices = {int(key, 16): doc for key, doc in dict(document.get("devices", {})).items()}
        groups = {str(k): list(v) for k, v in dict(document.get("groups", {})).items()}
        self._write(devices, groups, replace=True)
        self.legacy_path.rename(self.legacy_path.with_name(LEGACY_FILE_NAME + ".imported"))
        log.info("pair state: imported %d devices from %s", len(devices), self.legacy_path)

    # Committing...

    def commit(
        self,
        devices: Mapping[int, dict[str, Any] | None],
        groups: Mapping[str, list[int]] | None = None,
        armed: Mapping[int, int] | None = None,
    ) -> None:
        """Write these devices' documents (None: the device is unpaired, its row goes), these
        groups' members, and these devices' armed suspend time (device -> T, 0: disarmed; the
        only field an arm changes, so one statement per T, not a document per device), in
        one durable transaction. An armed device must have a row (it is paired): one without
        fails the whole commit."""
        self._write(devices, groups or {}, replace=False, armed=armed or {})

    def _write(
        self,
        devices: Mapping[int, dict[str, Any] | None],
        groups: Mapping[str, list[int]],
        *,
        replace: bool,
        armed: Mapping[int, int] | None = None,
    ) -> None:
        by_time: dict[int, list[int]] = {}
        for key, at_ns in (armed or {}).items():
            by_time.setdefault(at_ns, []).append(key)
        upserts = [(key, *_row(doc)) for key, doc in devices.items() if doc is not None]
        deletes = [(key,) for key, doc in devices.items() if doc is None]
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if replace:
                    db.execute("DELETE FROM pairs")
                    db.execute("DELETE FROM groups")
                db.executemany(_INSERT, upserts)
                db.executemany("DELETE FROM pairs WHERE device = ?", deletes)
                db.executemany(
                    "INSERT OR REPLACE INTO groups (name, members) VALUES (?, ?)",
                    [(name, json.dumps(sorted(m))) for name, m in groups.items()],
                )
                for at_ns, keys in by_time.items():
                    updated = db.execute(_ARM, (at_ns, json.dumps(keys))).rowcount
                    if updated != len(keys):
                        raise VolumeIOError(
                            f"pair state {self.path}: cannot arm {len(keys)} devices at "
                            f"{at_ns}: {updated} of them have a pair row (an armed device is "
                            "paired): nothing of this commit was written"
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise VolumeIOError(f"pair state {self.path}: cannot commit: {exc}") from exc
        self.commits += 1
        self.rows_written += len(upserts) + len(deletes) + len(armed or {})


__all__ = ["LEGACY_FILE_NAME", "STORE_FILE_NAME", "PairStore"]
