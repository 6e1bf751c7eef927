# The catalog's errors: every one is a CatalogError, and so a RemcopyError.
#
# Why here and not in `remcopy.errors`: the catalog is written alongside other packages that
# edit that module, and its errors never cross the native protocol, so they need no wire code
# lookup. They keep the house rules all the same (STYLE.md section 9): a class per condition, a
# docstring that is the default message, messages shaped `catalog: <what is wrong>: key=value`,
# and attributes that hold the offending values so callers need not parse text.
#
# Codes 80-99 are the catalog's; `exit_code` is 2 where the caller's input was at fault (a name
# that exists, a duplicate device, an address already in a group) and 1 otherwise.
from __future__ import annotations

from remcopy.errors import RemcopyError


class CatalogError(RemcopyError):
    """catalog error"""

    code = 80


class CatalogUnavailable(CatalogError):
    """catalog: cannot use the catalog database"""

    code = 81
    retryable = True


class CatalogInputError(CatalogError):
    """catalog: a value cannot be stored"""

    code = 93
    exit_code = 2


class CatalogSchemaTooNew(CatalogError):
    """catalog: the database schema is newer than this remcopy; upgrade remcopy"""

    code = 82


class HostNotFound(CatalogError):
    """catalog: no such host"""

    code = 83
    exit_code = 2

    def __init__(self, host: str) -> None:
        super().__init__(
            f"catalog: no such host: host={host}: hint: add it with `remcopy host add`"
        )
        self.host = host


class HostExists(CatalogError):
    """catalog: the host is already defined"""

    code = 84
    exit_code = 2

    def __init__(self, host: str) -> None:
        super().__init__(
            f"catalog: host already defined: host={host}: hint: pass replace to update it"
        )
        self.host = host


class ScanNotFound(CatalogError):
    """catalog: no such scan"""

    code = 85
    exit_code = 2

    def __init__(self, host: str, scan_id: int | None) -> None:
        what = "no scan stored" if scan_id is None else "no such scan"
        shown = "" if scan_id is None else f" scan_id={scan_id}"
        super().__init__(f"catalog: {what}: host={host}{shown}")
        self.host = host
        self.scan_id = scan_id


class DuplicateDevice(CatalogError):
    """catalog: a scan lists one device number more than once"""

    code = 86
    exit_code = 2

    def __init__(self, host: str, devices: list[str]) -> None:
        shown = ",".join(devices)
        super().__init__(f"catalog: scan lists a device more than once: host={host} device={shown}")
        self.host = host
        self.devices = devices


class OperationNotFound(CatalogError):
    """catalog: no such operation in the log"""

    code = 87
    exit_code = 2

    def __init__(self, operation_id: int) -> None:
        super().__init__(f"catalog: no such operation: id={operation_id}")
        self.operation_id = operation_id


class GroupNotFound(CatalogError):
    """catalog: no such group"""

    code = 88
    exit_code = 2

    def __init__(self, group: str) -> None:
        super().__init__(f"catalog: no such group: group={group}")
        self.group = group


class GroupExists(CatalogError):
    """catalog: the group is already defined"""

    code = 89
    exit_code = 2

    def __init__(self, group: str) -> None:
        super().__init__(
            f"catalog: group already defined: group={group}: hint: pass replace to update it"
        )
        self.group = group


class PairConflict(CatalogError):
    """catalog: a pair's address is used twice in the definition or belongs to another group"""

    code = 90
    exit_code = 2

    def __init__(self, group: str, problems: list[str]) -> None:
        # `problems` names every bad address, one `address=... <why>` line each; the message
        # shows the first few so it stays one readable line.
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"catalog: pairs refused: group={group}: {shown}")
        self.group = group
        self.problems = problems


class GroupMapNotFound(CatalogError):
    """catalog: no group map stored for that group and host"""

    code = 91
    exit_code = 2

    def __init__(self, group: str, host: str) -> None:
        super().__init__(
            f"catalog: no group map stored: group={group} host={host}: "
            "hint: run `remcopy group load`"
        )
        self.group = group
        self.host = host


class GroupMapMismatch(CatalogError):
    """catalog: a group map row does not match a pair of the group"""

    code = 92
    exit_code = 2

    def __init__(self, group: str, host: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"catalog: group map refused: group={group} host={host}: {shown}")
        self.group = group
        self.host = host
        self.problems = problems


class CatalogNotFound(CatalogError):
    """catalog: no catalog at that location"""

    code = 94
    exit_code = 2

    def __init__(self, location: str, why: str, *, source: str | None = None) -> None:
        # `location` is a path or a URL shown without its password; `source` says where the
        # caller got it (the CLI: `--catalog`, `REMCOPY_CATALOG` or its default).
        given = f" (from {source})" if source else ""
        super().__init__(
            f"catalog: no catalog at {location}{given}: {why}; nothing was created: "
            f"hint: check the location, or create the catalog with "
            f"`remcopy catalog init {location}` or a first `remcopy host add`"
        )
        self.location = location
        self.why = why
        self.source = source
