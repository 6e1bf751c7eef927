# The operation log: who did what to which target, when, how long, and how it ended.
from __future__ import annotations

from typing import Any

import pytest

from remcopy.catalog import Catalog, CatalogInputError, Operation, OperationNotFound

# What a group suspend keeps as its record (issue 6), as an example of details.
SUSPEND_RECORD: dict[str, Any] = {
    "t_ns": 1_700_000_000_123_456_789,
    "margin_s": 0.05,
    "seal_ns": {"ctl1": 1_700_000_000_123_456_999, "ctl2": 1_700_000_000_123_457_100},
    "late_writes_refused": 3,
    "host_io_held_ms": 1.25,
    "pairs": [{"primary": "64015:1A00:0A:00", "state": "SUSPENDED"}],
    "consistent": True,
}


def _log(catalog: Catalog, **changes: Any) -> int:
    values: dict[str, Any] = {
        "who": "operator",
        "op": "suspend",
        "target": "pay",
        "started_ns": 1_700_000_000_000_000_000,
        "duration_s": 0.012,
        "result": "ok",
        "details": {},
    }
    values.update(changes)
    return catalog.log_operation(**values)


def test_Catalog_log_operation_then_operation_one(catalog: Catalog) -> None:
    """A logged operation reads back whole, its details (a suspend record) intact."""
    operation_id = _log(catalog, details=SUSPEND_RECORD)
    assert catalog.operation_one(operation_id) == Operation(
        id=operation_id,
        who="operator",
        op="suspend",
        target="pay",
        started_ns=1_700_000_000_000_000_000,
        duration_s=0.012,
        result="ok",
        details=SUSPEND_RECORD,
    )


def test_Catalog_operations_all_newest_first_with_limit(catalog: Catalog) -> None:
    """operations_all returns the newest operations first, at most `limit` of them."""
    ids = [_log(catalog, started_ns=n) for n in range(5)]
    assert [o.id for o in catalog.operations_all(limit=3)] == ids[:1:-1]
    assert [o.id for o in catalog.operations_all(limit=100)] == ids[::-1]


def test_Catalog_operations_all_by_target_and_op(catalog: Catalog) -> None:
    """operations_all filters by target, by op, or by both."""
    pay_suspend = _log(catalog, target="pay", op="suspend")
    _log(catalog, target="hr", op="suspend")
    pay_resume = _log(catalog, target="pay", op="resume", result="failed")
    assert [o.id for o in catalog.operations_all(limit=10, target="pay")] == [
        pay_resume,
        pay_suspend,
    ]
    assert [o.id for o in catalog.operations_all(limit=10, target="pay", op="suspend")] == [
        pay_suspend
    ]
    assert catalog.operations_all(limit=10, target="nobody") == []
    assert catalog.operation_one(pay_resume).result == "failed"


def test_Catalog_log_operation_refuses_an_unknown_result(catalog: Catalog) -> None:
    """A result other than ok or failed is CatalogInputError, and nothing is logged."""
    with pytest.raises(CatalogInputError, match="result must be ok or failed"):
        _log(catalog, result="maybe")
    assert catalog.operations_all(limit=10) == []


def test_Catalog_log_operation_refuses_details_json_cannot_hold(catalog: Catalog) -> None:
    """Details that are not plain JSON are CatalogInputError, and nothing is logged."""
    with pytest.raises(CatalogInputError, match="operation details"):
        _log(catalog, details={"margin_s": float("nan")})
    assert catalog.operations_all(limit=10) == []


def test_Catalog_operations_all_refuses_a_limit_below_one(catalog: Catalog) -> None:
    """A limit of zero is CatalogInputError naming the value."""
    with pytest.raises(CatalogInputError, match="limit=0"):
        catalog.operations_all(limit=0)


def test_Catalog_operation_one_unknown_is_OperationNotFound(catalog: Catalog) -> None:
    """An id that was never logged is OperationNotFound naming it."""
    with pytest.raises(OperationNotFound, match="id=42"):
        catalog.operation_one(42)
