# remcopy.catalog: where the management layer keeps what it learned and what it did.
#
# Hosts and their device maps (one version per scan), the operation log, copy groups with their
# pairs, and group maps, in an SQLite file or a PostgreSQL database (docs/catalog.md). Open one
# with `Catalog.open(path_or_url)`; it migrates the schema to this remcopy's version. Every
# write is one transaction: a failed write changes nothing.
from __future__ import annotations

from remcopy.catalog.errors import (
    CatalogError,
    CatalogInputError,
    CatalogNotFound,
    CatalogSchemaTooNew,
    CatalogUnavailable,
    DuplicateDevice,
    GroupExists,
    GroupMapMismatch,
    GroupMapNotFound,
    GroupNotFound,
    HostExists,
    HostNotFound,
    OperationNotFound,
    PairConflict,
    ScanNotFound,
)
from remcopy.catalog.records import (
    ConflictKind,
    Group,
    GroupMap,
    GroupMapRow,
    Host,
    MapChange,
    MapConflict,
    MapDiff,
    MapEntry,
    Operation,
    OperationResult,
    Pair,
    Scan,
    ScanFailure,
    Sighting,
)
from remcopy.catalog.store import Catalog

__all__ = [
    "Catalog",
    # records
    "ConflictKind",
    "Group",
    "GroupMap",
    "GroupMapRow",
    "Host",
    "MapChange",
    "MapConflict",
    "MapDiff",
    "MapEntry",
    "Operation",
    "OperationResult",
    "Pair",
    "Scan",
    "ScanFailure",
    "Sighting",
    # errors
    "CatalogError",
    "CatalogInputError",
    "CatalogNotFound",
    "CatalogSchemaTooNew",
    "CatalogUnavailable",
    "DuplicateDevice",
    "GroupExists",
    "GroupMapMismatch",
    "GroupMapNotFound",
    "GroupNotFound",
    "HostExists",
    "HostNotFound",
    "OperationNotFound",
    "PairConflict",
    "ScanNotFound",
]
