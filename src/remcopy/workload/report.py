# The checker's verdict as values: a violation with a named reason, a report per chain, and
# the report on a whole image (printed by `remcopy verify`, with stable --json keys).
#
# Why a module of its own: the fault campaigns, the CLI and the tests read these; none of them
# needs the checker's machinery to do it.
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from remcopy.ids import HardwareAddress


class Reason(enum.Enum):
    MISSING = "missing write"
    STALE = "stale write"
    MISPLACED = "misplaced record"
    CORRUPT = "corrupt record"
    NOT_AS_ACKNOWLEDGED = "not as acknowledged"
    INDEX_WITHOUT_DATA = "index without data"
    ACKED_MISSING = "acknowledged write missing"
    NO_COMMON_TIME = "no common cut time"
    NOT_CUT_AT_T = "not the cut at T"


# When two violations concern the same seq, the more specific one is reported first.
PRIORITY = {reason: i for i, reason in enumerate(Reason)}
PRIORITY[Reason.INDEX_WITHOUT_DATA] = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    reason: Reason
    message: str
    chain: int | None = None
    seq: int = 0
    """The write it concerns: the one missing, or the one out of place."""
    volume: HardwareAddress | None = None
    """The primary volume (logical location) where it was found."""
    offset: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason.name.lower(),
            "message": self.message,
            "chain": self.chain,
            "seq": self.seq,
            "volume": None if self.volume is None else str(self.volume),
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    chain: int
    indexed: bool
    logged: int
    """Acknowledged writes in the log."""
    prefix: int
    """The longest prefix of the chain present in the image."""
    prefix_stamp_ns: int = 0
    """The issue stamp of write `prefix` (0 when the prefix is empty)."""
    unlogged: int = 0
    """Writes present beyond the log: acknowledged after its last flush, or in flight."""
    acked_missing: int = 0
    """Logged (acknowledged) writes beyond the prefix: absent from the image."""
    violations: tuple[Violation, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def first_violation(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def to_json(self) -> dict[str, Any]:
        first = self.first_violation
        return {
            "chain": self.chain,
            "indexed": self.indexed,
            "logged": self.logged,
            "prefix": self.prefix,
            "prefix_stamp_ns": self.prefix_stamp_ns,
            "unlogged": self.unlogged,
            "acked_missing": self.acked_missing,
            "violations": len(self.violations),
            "first_violation": None if first is None else first.to_json(),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckReport:
    """The checker's verdict on one image, with the reasons."""

    image: str
    consistent: bool
    require_all_acked: bool
    chains: tuple[ChainReport, ...]
    violations: tuple[Violation, ...]
    """Every violation: the chains' (by chain and seq), then the cross-chain ones."""
    cut_window_ns: tuple[int, int | None] | None
    """(lo, hi): the image is the state at any T with lo < T <= hi (hi None: unbounded);
    None when no single T explains it."""
    stamp_window_ns: tuple[int, int | None] | None
    """(lo, hi): every write stamped < T present and none stamped >= T, for lo < T <= hi;
    None when the image is not such a timestamp cut."""
    at_ns: int | None = None
    locations: int = 0
    bytes_read: int = 0

    @property
    def acked_missing(self) -> int:
        return sum(c.acked_missing for c in self.chains)

    @property
    def first_violation(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def summary(self) -> str:
        writes = sum(c.prefix for c in self.chains)
        if self.consistent:
            return (
                f"{self.image}: consistent: {len(self.chains)} chains, {writes} writes in the "
                f"prefixes, {self.acked_missing} acknowledged writes absent"
            )
        first = self.first_violation
        assert first is not None
        return (
            f"{self.image}: NOT consistent: {len(self.violations)} violations; first: "
            f"{first.reason.value}: {first.message}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "consistent": self.consistent,
            "require_all_acked": self.require_all_acked,
            "acked_missing": self.acked_missing,
            "cut_window_ns": None if self.cut_window_ns is None else list(self.cut_window_ns),
            "stamp_window_ns": None if self.stamp_window_ns is None else list(self.stamp_window_ns),
            "at_ns": self.at_ns,
            "locations": self.locations,
            "bytes_read": self.bytes_read,
            "chains": [c.to_json() for c in self.chains],
            "violations": [v.to_json() for v in self.violations[:1000]],
        }
