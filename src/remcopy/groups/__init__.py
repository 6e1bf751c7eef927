"""Copy groups: definitions, pair lookup, group maps, and group operations."""

from remcopy.groups.model import Group, GroupOptions, GroupPair
from remcopy.groups.operations import GroupReport, PairOutcome, plan, run_operation, suspend

__all__ = [
    "Group",
    "GroupOptions",
    "GroupPair",
    "GroupReport",
    "PairOutcome",
    "plan",
    "run_operation",
    "suspend",
]
