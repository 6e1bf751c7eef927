# A host's pair request resolved and planned: which devices it names, which it may act on,
# and what the ledger decides for each.
#
# Why: every host pair operation (pairops.py, suspendops.py) starts the same way: resolve the
# items to devices (named twice, unknown, not allowed: refused), then ask the ledger over the
# batch. One copy of that, so the refusals are the same whatever the operation.
#
# Rules this module keeps:
# - A refused item never fails the others and changes nothing.
# - What a device may do is the ledger's to decide; nothing here decides it.
from __future__ import annotations

from typing import TYPE_CHECKING

from remcopy import ledger
from remcopy.controller.core import HostGrant
from remcopy.controller.pairsteps import named_once, pair_view, result_refused
from remcopy.errors import RemcopyError
from remcopy.wire.native import PairItem, PairOpRequest, PairResult

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica


class HostRequests:
    """Resolve a host's pair request and plan it with the ledger."""

    def __init__(self, rep: Replica, freezer: Freezer) -> None:
        self.rep = rep
        self.freezer = freezer

    def devices(
        self, grant: HostGrant, request: PairOpRequest
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult]]:
        """Resolve the items; devices named twice, unknown or not allowed are refused here
        (what each may do is the ledger's to decide)."""
        good: list[tuple[PairItem, DeviceRun]] = []
        refused: list[PairResult] = []
        seen: set[int] = set()
        for item in request.items:
            try:
                named_once(item.device, seen)
                device = self.rep.controller.device_for_host(grant, item.device)
                run = self.rep.runs[device.key]
            except RemcopyError as exc:
                known = self.rep.controller.devices.get(item.device)
                refused.append(result_refused(item.device, exc, known))
                continue
            good.append((item, run))
        return good, refused

    def view(self, run: DeviceRun) -> ledger.PairView:
        """The ledger's view of a device's pair (and of its run: shadow copy, freeze, seal)."""
        return pair_view(run, self.freezer)

    def plan(
        self, grant: HostGrant, request: PairOpRequest, asked: ledger.OpRequest, now_ns: int = 0
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult], ledger.Plan]:
        """Resolve the items and plan `asked` for them (ledger.plan): the devices the plan
        accepts, every refusal (of resolution and of the plan) and the plan."""
        good, results = self.devices(grant, request)
        made = ledger.plan({run.device.key: self.view(run) for _item, run in good}, asked, now_ns)
        accepted: list[tuple[PairItem, DeviceRun]] = []
        for item, run in good:
            refusal = made.decisions[run.device.key].refusal
            if refusal is not None:
                results.append(result_refused(item.device, refusal, run.device))
            else:
                accepted.append((item, run))
        return accepted, results, made


__all__ = ["HostRequests"]
