"""Copy groups: definitions, pair lookup, group maps, and group operations."""

from remcopy.groups.model import Group, GroupOptions, GroupPair
from remcopy.groups.operations import (
    GroupReport,
    PairOutcome,
    plan,
    recover,
    run_operation,
    suspend,
)
from remcopy.groups.preview import PlannedPair, preview
from remcopy.groups.progress import (
    OperationProgress,
    PairProgress,
    ProgressCallback,
    follow_copies,
)

__all__ = [
    "Group",
    "GroupOptions",
    "GroupPair",
    "GroupReport",
    "OperationProgress",
    "PairOutcome",
    "PairProgress",
    "PlannedPair",
    "ProgressCallback",
    "follow_copies",
    "plan",
    "preview",
    "recover",
    "run_operation",
    "suspend",
]
