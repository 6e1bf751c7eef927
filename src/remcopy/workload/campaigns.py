# Fault campaigns: the dependent-write workload against real controllers while a seeded
# schedule injects one fault per iteration, and the checker's verdict after each one.
#
# Why: a consistency claim is only as good as the faults it survived (issue 9, DESIGN.md
# sections 2 and 5). Each campaign here is one kind of fault, run for N iterations on one
# world of real controller processes on 127.0.0.1 (two primary controllers at site A, one
# secondary controller at site B with spare tertiary volumes, one group over all pairs; see
# faultworld.py):
#
#   kill_primary    kill -9 of a primary controller at a random ack count (its link cut at the
#                   same moment: the site is lost); recover at the secondary: consistent, and
#                   no acknowledged write missing. The links carry a seeded WAN delay.
#   kill_secondary  kill -9 of the secondary controller; writes go on; restart, resume under
#                   load: primaries and secondaries identical at the end (checksums).
#   link_fault      cut, stall or delay of one primary's replication link in a consistency
#                   group: cut and stall end in a freeze (watch_and_freeze), a delay in a
#                   planned suspend at T; the secondaries are consistent; resume, identical.
#   suspend_shadow  group suspend at a prospective T under load (an async group over delayed
#                   links), shadow copies, resume under load: secondaries and shadows are the
#                   cut at T; resynced, identical.
#   io_fault        a primary volume's backing file turns full (ENOSPC) or bad (EIO) after a
#                   random number of writes (config volume_faults, testing only): the write is
#                   refused with an error naming the volume and errno, nothing acknowledged is
#                   lost, the controller goes on serving its other volumes.
#   rolling         a consistency group over three primary controllers and nothing but the
#                   controllers running (no watch_and_freeze, no management suspend): one
#                   primary's link stalled or cut, the secondary SIGSTOPped, or kill -9 of one
#                   primary, at a random ack count. The controllers must freeze the group by
#                   themselves: every pair SUSPENDED or SUSPENDED_ERROR at one T, the
#                   secondary a consistent cut holding every write acknowledged before the
#                   fault and none stamped at or after T; heal, resume, identical. Its freeze
#                   figures (event arrival times at the harness, write latencies during the
#                   freeze) are in the result; `measure_detection` times link death to the
#                   first hold with no host writes at all.
#
# Every campaign returns a CampaignResult (figures and failures) instead of asserting, so a
# test can also assert the opposite: with a planted bug (config planted_bugs, testing only),
# the campaign that must catch it reports the failed check (`hunt_planted_bug`).
#
# Rules this module keeps:
# - Every random choice comes from the seed, per campaign and iteration; the seed is in the
#   result and printed by the callers. Faults happen at ack counts, never after a sleep.
# - Waiting is on events (ready lines, "-> DUPLEX" lines, acknowledged-write counts, shadow
#   "done" lines) or on states (queries); every wait is bounded by ITERATION_TIMEOUT_S.
# - A check that fails is a finding (`checks`); anything else that goes wrong stops the
#   campaign as a harness failure, and is never counted as a detection.
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from remcopy.controller.process import ControllerProcess
from remcopy.errors import RemcopyError
from remcopy.events import EventKind
from remcopy.groups import GroupPair, recover, run_operation, suspend
from remcopy.groups.freeze import watch_and_freeze
from remcopy.groups.progress import follow_copies
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import DeviceStatus, PairItem, PairOp
from remcopy.workload.checker import check_image
from remcopy.workload.faultworld import (
    ITERATION_TIMEOUT_S,
    VOLUME_BYTES,
    Arrival,
    HarnessError,
    Load,
    Shape,
    World,
    digest,
    establish,
    events,
    recorded,
    restart,
    resume,
    succeeded,
    until_settled,
    world,
)
from remcopy.workload.image import Image, ImageReader
from remcopy.workload.log import read_log
from remcopy.workload.report import CheckReport, Reason
from remcopy.workload.workload import WorkloadStats

CAMPAIGNS: Final = (
    "kill_primary",
    "kill_secondary",
    "link_fault",
    "suspend_shadow",
    "io_fault",
    "rolling",
    "async_disaster",
)
PLANTED_BUGS: Final = (
    "mirror_late_write",
    "drop_update",
    "skip_changemap_bit",
    "early_sync_ack",
    "freeze_local_only",
    "freeze_late_sibling",
    "no_hold",
    "clear_bit_early",
    "failback_one_side",
    "resume_ignores_shadow",
    "siblings_different_t",
    "async_apply_past_c",
    "watermark_ahead",
    "replicator_ignores_failure",
    "seal_without_drain",
)
# The campaigns that catch each planted bug. The first is the one tests/campaigns asserts
# catches it; the rest caught it too when every bug was hunted with every campaign
# (bench/faults.py without --quick; docs/consistency.md has the table).
CATCHERS: Final = {
    "mirror_late_write": ("suspend_shadow", "link_fault"),
    "drop_update": ("kill_secondary", "kill_primary", "link_fault", "suspend_shadow", "io_fault"),
    "skip_changemap_bit": ("kill_secondary", "link_fault", "suspend_shadow"),
    "early_sync_ack": ("kill_primary", "link_fault"),
    # The controller freeze's guarantees: only the rolling campaign runs without a
    # management process that would freeze the group in the controllers' place.
    "freeze_local_only": ("rolling",),
    "freeze_late_sibling": ("rolling",),
    "no_hold": ("rolling",),
    "clear_bit_early": ("kill_primary",),
    "failback_one_side": ("kill_primary",),
    "resume_ignores_shadow": ("suspend_shadow",),
    "siblings_different_t": ("rolling",),
    # The async consistency time: only async_disaster loses a site with updates in flight.
    "async_apply_past_c": ("async_disaster",),
    "watermark_ahead": ("async_disaster",),
    "replicator_ignores_failure": ("rolling",),
    "seal_without_drain": ("async_disaster",),
}
# The faults a hunt with the first catcher chooses from, for the bugs that only some faults
# of that campaign can show (the others, and other campaigns: every fault). A freeze is
# needed to arm devices at T, a lost site to lose what was in flight, a suspend to seal one.
HUNT_FAULTS: Final[dict[str, tuple[str, ...]]] = {
    "siblings_different_t": ("stall", "cut"),
    "replicator_ignores_failure": ("stall", "cut"),
    "async_apply_past_c": ("stall", "cut"),
    "watermark_ahead": ("stall", "cut"),
    "seal_without_drain": ("suspend",),
}
# What each planted bug is caught for by its first catcher: text of the first failed check,
# the checker's Reason of its first violation ("first: <reason>: ") or the campaign's named
# check. Any one of them, or all of them for the bugs in CAUGHT_FOR_ALL. Another reason would
# mean the bug was caught by accident, through a rule it does not break.
_LOST: Final = tuple(
    f"first: {r.value}: "
    for r in (Reason.MISSING, Reason.STALE, Reason.INDEX_WITHOUT_DATA, Reason.ACKED_MISSING)
)
_NOT_FROZEN: Final = ("the group did not freeze", "not frozen at one T")
_NOT_A_CUT: Final = (*_LOST, f"first: {Reason.NO_COMMON_TIME.value}: ")
CAUGHT_FOR: Final[dict[str, tuple[str, ...]]] = {
    # A write stamped >= T mirrored: the secondary is not the cut at T, or its chain's prefix
    # reaches that write while the writes before it, change-recorded, are absent (their
    # location holds nothing, or an older write of the chain; when the mirrored write is an
    # index write, its data write is the one absent: seed 2501067479).
    "mirror_late_write": (
        f"first: {Reason.NOT_CUT_AT_T.value}: ",
        f"first: {Reason.MISSING.value}: ",
        f"first: {Reason.STALE.value}: ",
        f"first: {Reason.INDEX_WITHOUT_DATA.value}: ",
    ),
    # An update confirmed but never sent, a change-map bit lost, the host acknowledged before
    # the secondary: acknowledged writes absent after the resync or the recover.
    "drop_update": _LOST,
    "skip_changemap_bit": _LOST,
    "early_sync_ack": _LOST,
    # The controllers' own freeze: the rolling campaign's checks of the freeze, or the
    # secondaries not a cut (a sibling mirrored writes that depend on the failed device's
    # change-recorded ones). With a SIGSTOPped secondary nothing reaches it, so the cut itself
    # may stay whole and only the freeze's checks fail.
    "freeze_local_only": _NOT_FROZEN + _NOT_A_CUT,
    "freeze_late_sibling": _NOT_FROZEN + _NOT_A_CUT,
    "no_hold": _NOT_FROZEN + _NOT_A_CUT,
    # A track the killed primary wrote and its secondary never received is missing from the
    # map the failback copies by (cleared before the confirmation; the old primary's map not
    # sent back): the failback does not undo it, and the pair's volumes differ.
    "clear_bit_early": ("and a failback: ", " differs from "),
    "failback_one_side": ("and a failback: ", " differs from "),
    # The secondary resumed before its shadow copy was done.
    "resume_ignores_shadow": ("resumed while its shadow copy ran",),
    # One device of the group sealed after the group's T mirrors writes that depend on
    # change-recorded ones of its siblings: the secondaries are not a cut; or, seen directly,
    # the pairs report more than one suspend time ("not frozen at one T": with seed
    # 3136650214 the freeze's check failed before the secondaries were read).
    "siblings_different_t": ("not frozen at one T", *_NOT_A_CUT),
    # An async secondary that writes updates stamped >= C (or whose C passed updates still
    # in flight, W ahead of them) holds writes whose predecessors never arrived when the site
    # is lost: not a cut.
    "async_apply_past_c": _NOT_A_CUT,
    "watermark_ahead": _NOT_A_CUT,
    # A link's failure was reported, and its pairs neither held nor left DUPLEX.
    "replicator_ignores_failure": ("replication failure ignored",),
    # The site lost right after the suspend was reported: writes stamped < T that were still
    # in flight are absent, and the recovered cut is not the cut at T.
    "seal_without_drain": (f"first: {Reason.NOT_CUT_AT_T.value}: ", *_NOT_A_CUT),
}
CAUGHT_FOR_ALL: Final = frozenset({"clear_bit_early", "failback_one_side"})
# How often each bug fires in a hunt: on every n-th eligible event.
PLANTED_BUG_EVERY: Final = {
    "mirror_late_write": 1,
    "drop_update": 3,
    "skip_changemap_bit": 1,
    "early_sync_ack": 1,
    "freeze_local_only": 1,
    "freeze_late_sibling": 1,
    "no_hold": 1,
    "clear_bit_early": 1,
    "failback_one_side": 1,
    "resume_ignores_shadow": 1,
    "siblings_different_t": 1,
    "async_apply_past_c": 1,
    "watermark_ahead": 1,
    "replicator_ignores_failure": 1,
    "seal_without_drain": 1,
}

# A stalled link counts as failed after this long without a confirmation.
ACK_TIMEOUT_S: Final = 1.0
# async_disaster: the slow link's one-way delay, and how long the stalled link holds its
# bytes before the site is lost (the fault's shape, as a congested WAN link gives it).
SLOW_LINK_S: Final = (0.05, 0.2)
STALL_S: Final = 1.0
ASYNC_FAULTS: Final = ("stall", "cut", "suspend")
"""async_disaster: a link stalled, or cut (a freeze), or a group suspend at T, before the
site is lost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignSettings:
    """How long and how hard one campaign runs."""

    iterations: int = 3
    seed: int = 0
    writers: int = 6
    acks_min: int = 20
    """The fault comes after a random number of acknowledged writes in [acks_min, acks_max]."""
    acks_max: int = 120
    planted_bugs: tuple[str, ...] = ()
    """TESTING ONLY: bugs planted in the primary controllers (config planted_bugs)."""
    planted_bug_every: int = 50
    stop_on_detection: bool = False
    """Stop at the first failed check (hunting a planted bug)."""
    progress: Callable[[str], None] | None = None
    """Called with one line per iteration (the bench prints them on stderr)."""
    faults: tuple[str, ...] = ()
    """rolling and async_disaster: the faults to choose from (empty: all of ROLLING_FAULTS,
    ASYNC_FAULTS)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignResult:
    """What one campaign did and found; a failed check is in `findings`, never raised."""

    campaign: str
    seed: int
    iterations: int
    faults_injected: int
    checks: int
    checks_passed: int
    acked_writes_lost: int
    inconsistent_secondaries: int
    writes_acked: int
    elapsed_s: float
    planted_bugs: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    """Every failed check: iteration, what was checked, and the first violation."""
    faults: tuple[str, ...] = ()
    """The fault of each iteration, as `kind victim` (rolling)."""
    freeze_ms: tuple[float, ...] = ()
    """rolling: per freeze, the first `hold` line to the last pair sealed (arrival times at
    the harness's event readers)."""
    freeze_write_latencies_ms: tuple[float, ...] = ()
    """rolling: the latency of every host write whose issue-to-acknowledgement overlapped a
    freeze window (the last attempt's stamp to its acknowledgement)."""
    freeze_issued_latencies_ms: tuple[float, ...] = ()
    """rolling: the same for the writes issued inside a freeze window only (after the first
    hold line: the detection time is not in them)."""
    harness_error: str = ""
    """Why the campaign stopped early, if something other than a check went wrong."""

    @property
    def detected(self) -> bool:
        """A check failed (what a planted bug must cause)."""
        return bool(self.findings)

    @property
    def ok(self) -> bool:
        return not self.findings and not self.harness_error and self.checks_passed == self.checks

    def line(self) -> str:
        bugs = f" planted={','.join(self.planted_bugs)}" if self.planted_bugs else ""
        text = (
            f"campaign {self.campaign} seed={self.seed}{bugs}: iterations {self.iterations}, "
            f"faults injected {self.faults_injected}, checks passed {self.checks_passed}/"
            f"{self.checks}, acknowledged writes lost {self.acked_writes_lost}, inconsistent "
            f"secondaries {self.inconsistent_secondaries}, writes acknowledged "
            f"{self.writes_acked}, {self.elapsed_s:.1f} s"
        )
        if self.findings:
            text += f"; first finding: {self.findings[0]}"
        if self.harness_error:
            text += f"; harness error: {self.harness_error}"
        return text


@dataclass
class _Tally:
    faults: int = 0
    checks: int = 0
    passed: int = 0
    acked_lost: int = 0
    inconsistent: int = 0
    writes: int = 0
    iterations: int = 0
    findings: list[str] = field(default_factory=list)
    faults_done: list[str] = field(default_factory=list)
    freeze_ms: list[float] = field(default_factory=list)
    freeze_write_latencies_ms: list[float] = field(default_factory=list)
    freeze_issued_latencies_ms: list[float] = field(default_factory=list)


# One iteration: its random choices, its checks...


class _Iteration:
    def __init__(
        self, w: World, name: str, index: int, settings: CampaignSettings, tally: _Tally
    ) -> None:
        self.w, self.index, self.settings, self.tally = w, index, settings, tally
        self.rng = random.Random(f"remcopy-campaign:{settings.seed}:{name}:{index}")
        self._logs = 0

    def acks(self) -> int:
        return self.rng.randint(self.settings.acks_min, self.settings.acks_max)

    def load(self, *, writes: int | None = None) -> Load:
        self._logs += 1
        path = self.w.root / f"iteration{self.index:04d}-{self._logs}.jsonl"
        return Load(
            self.w,
            path,
            seed=self.rng.randrange(1 << 32),
            writers=self.settings.writers,
            writes=writes,
        )

    def finding(self, text: str) -> None:
        self.tally.findings.append(f"iteration {self.index}: {text}")

    def passed(self, ok: bool, what: str, *, secondary: bool) -> bool:
        self.tally.checks += 1
        if ok:
            self.tally.passed += 1
        else:
            self.tally.inconsistent += secondary
            self.finding(what)
        return ok

    async def check(
        self,
        load: Load,
        image: Image,
        *,
        require_all_acked: bool,
        at_ns: int | None = None,
        what: str = "",
    ) -> CheckReport:
        tertiaries = self.w.tertiaries if image is Image.SHADOW else None
        reader = ImageReader(self.w.session, self.w.group, image, tertiaries=tertiaries)
        report = await check_image(
            reader,
            read_log(load.log_path),
            require_all_acked=require_all_acked,
            at_ns=at_ns,
            name=reader.name,
            image=f"{image.value} {what}".strip(),
        )
        if require_all_acked:
            # Absent acknowledged writes: after the image's prefix, and holes inside it (every
            # write of a prefix was acknowledged before the next one was issued), each once.
            holes = {
                (v.chain, v.seq)
                for v in report.violations
                if v.reason in _ACKED_WRITE_ABSENT and v.seq
            }
            self.tally.acked_lost += report.acked_missing + len(holes)
        self.passed(report.consistent, report.summary(), secondary=image is not Image.PRIMARY)
        return report

    async def identical(self, what: str, *, settle: bool = True) -> None:
        """Every secondary holds exactly its primary's bytes (both frozen: no writes).
        settle=False: the caller saw the copies end (the pairs may run the other way)."""
        if settle:
            await until_settled(self.w)
        differ = []
        for pair in self.w.group.pairs:
            primary = await digest(self.w.session.channels[pair.primary_controller], pair.primary)
            secondary = await digest(
                self.w.session.channels[pair.secondary_controller or "cntlb"], pair.secondary
            )
            if primary != secondary:
                differ.append(f"{pair.secondary} differs from {pair.primary}")
        self.passed(not differ, f"{what}: " + "; ".join(differ), secondary=True)

    def counted(self, load: Load) -> WorkloadStats:
        stats = load.stats()
        self.tally.writes += stats.writes_acked
        return stats


# Violations that mean a write of the image's prefix is absent (its seq is the violation's).
_ACKED_WRITE_ABSENT: Final = frozenset(
    {Reason.MISSING, Reason.STALE, Reason.CORRUPT, Reason.INDEX_WITHOUT_DATA}
)


# The campaigns...


async def _kill_primary(it: _Iteration) -> None:
    w = it.w
    victim = it.rng.randrange(len(w.primaries))
    for link in w.links:
        link.delay(it.rng.uniform(0.001, 0.005))  # a WAN: an ack takes a round trip or two
    async with it.load() as load:
        await load.wait(it.acks())
        proc, process = w.primaries[victim], w.primaries[victim].process
        assert process is not None
        process.kill()  # the site is lost with its network: SIGKILL and the cut at once
        w.links[victim].cut()
        await proc.kill()
        it.tally.faults += 1
    it.counted(load)
    succeeded(await run_operation(w.session, w.group, PairOp.RECOVER), "recover")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what=f"after kill -9 {proc.name}")
    w.links[victim].heal()
    await proc.start()
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=f"after restart {proc.name}")
    # Fail back as an operator would once the old site is back: the recovered secondaries
    # copy every track changed on either side to the old primaries, which become their
    # secondaries. The killed primary wrote tracks its secondary never received (a WAN round
    # trip was in flight): only its own change map names them, and they must be undone.
    failback = await run_operation(w.session, w.group, PairOp.FAILBACK)
    succeeded(failback, "failback")
    await follow_copies(w.session, failback, lambda _: None)
    await it.identical(f"after kill -9 {proc.name} and a failback", settle=False)
    # Back to the defined direction for the next iteration: every pair is ended (at the
    # current primaries, which tell their secondaries) and established again (a full copy
    # of 2 MiB volumes).
    succeeded(await run_operation(w.session, w.group.reversed(), PairOp.TERMINATE), "terminate")
    await establish(w)


async def _kill_secondary(it: _Iteration) -> None:
    w = it.w
    async with it.load() as load:
        await load.wait(it.acks())
        await w.secondary.kill()
        it.tally.faults += 1
        await load.wait(load.count + it.acks())  # change-recorded at the primaries
        await w.secondary.start()
        await resume(w)  # under load: the resync races the writes
        await load.wait(load.count + it.acks())
    it.counted(load)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what="after resync")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what="after resync")
    await it.identical("after kill -9 of the secondary and resume")


async def _link_fault(it: _Iteration) -> None:
    w = it.w
    victim = it.rng.randrange(len(w.primaries))
    fault = it.rng.choice(("cut", "stall", "delay"))
    link = w.links[victim]
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_and_freeze(w.session, w.group, ready=ready))
    try:
        await ready.wait()
        async with it.load() as load:
            await load.wait(it.acks())
            if fault == "cut":
                link.cut()
            elif fault == "stall":
                link.stall()
            else:
                link.delay(it.rng.uniform(0.001, 0.02))
            it.tally.faults += 1
            if fault == "delay":  # no error: the group is suspended at T under the slow link
                await load.wait(load.count + it.acks())
                watcher.cancel()
                report = await suspend(w.session, w.group)
            else:
                report = await watcher
            await load.wait(load.count + it.acks() // 4)  # after T: change-recorded
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    it.counted(load)
    what = f"{fault} of cntla{victim}'s link"
    frozen = f"{what}: the group did not stop consistent at one T: {report.to_json()}"
    it.passed(report.consistent, frozen, secondary=False)
    at_ns = report.at_ns if fault == "delay" else None  # a freeze cuts in real time
    await it.check(load, Image.SECONDARY, require_all_acked=False, at_ns=at_ns, what=what)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=what)
    link.heal()
    await resume(w)
    await it.identical(f"resumed after a {what}")


async def _async_disaster(it: _Iteration) -> None:
    """An async consistency group over three primaries: one link slow, another stalled for a
    second (or cut: the controllers freeze the group at one T; or the group suspended at a
    prospective T), then the whole primary site lost (every controller kill -9, every link
    cut), right after the suspend was reported for a suspend. The secondaries recover at the
    consistency time C: a consistent cut at C, holding every write acknowledged before C;
    after a suspend, the cut at T (every write stamped < T present, none stamped >= T).
    Then the group is set up again for the next iteration."""
    w = it.w
    slow, faulted = it.rng.sample(range(len(w.primaries)), 2)
    fault = it.rng.choice(it.settings.faults or ASYNC_FAULTS)
    suspended_ns: int | None = None
    for link in w.links:
        link.delay(it.rng.uniform(0.001, 0.005))
    w.links[slow].delay(it.rng.uniform(*SLOW_LINK_S))
    addresses = {str(p.primary) for p in w.group.pairs}
    async with recorded(w.primaries) as recorder, it.load() as load:
        await load.wait(it.acks())
        if fault == "stall":
            w.links[faulted].stall()
            await asyncio.sleep(STALL_S)  # the fault itself: the host goes on writing meanwhile
        elif fault == "suspend":
            # The site is lost the moment the suspend is reported: what the seal said was
            # drained must be at the secondaries by then.
            suspended = await suspend(w.session, w.group)
            suspended_ns = suspended.at_ns
            it.passed(
                suspended.consistent,
                f"suspend not consistent: {suspended.to_json()}",
                secondary=False,
            )
        else:
            w.links[faulted].cut()  # a replication error: the group freezes at one T
            froze = await recorder.wait(
                lambda events: len(_left_duplex(events, addresses)) == len(addresses),
                timeout_s=FREEZE_WAIT_S,
            )
            it.passed(
                froze, f"cut of cntla{faulted}'s link: the group did not freeze", secondary=False
            )
            await load.more(it.acks() // 4)  # after T: change-recorded
        for proc in w.primaries:
            assert proc.process is not None
            proc.process.kill()  # the site is lost with its network: SIGKILL and the cut
        for link in w.links:
            link.cut()
        for proc in w.primaries:
            await proc.kill()
        it.tally.faults += 1
    it.counted(load)
    report = succeeded(await recover(w.session, w.group), "recover")
    cut = report.cut or {}
    at_ns = int(cut.get("consistency_ns", 0))
    if fault == "suspend":
        what = f"site lost right after a suspend at T={suspended_ns}, cntla{slow}'s link slow"
    else:
        verb = "stalled" if fault == "stall" else "cut (frozen)"
        what = f"site lost with cntla{slow}'s link slow and cntla{faulted}'s {verb}"
    image = await it.check(
        load, Image.SECONDARY, require_all_acked=False, at_ns=suspended_ns, what=what
    )
    # A consistent cut AT C: every write present was issued before C, every write
    # acknowledged before C is present (the first absent one of each chain was acked later).
    window = image.cut_window_ns
    at_c = window is not None and window[0] < at_ns and (window[1] is None or at_ns <= window[1])
    it.passed(
        at_ns > 0 and at_c,
        f"{what}: recovered at C={at_ns}, but the image's cut window is {window}",
        secondary=True,
    )
    # Back to DUPLEX for the next iteration: the lost site is replaced by new controllers
    # (empty data folders: nothing of the old pairs comes back to race the new ones), the
    # recovered secondaries are ended and the group is established again (a full copy).
    for spec in w.specs:
        shutil.rmtree(spec.data_dir)
    for link in w.links:
        link.heal()
    await asyncio.gather(*(proc.start() for proc in w.primaries))
    await _terminate_secondaries(w)
    await establish(w)


async def _terminate_secondaries(w: World) -> None:
    """End every pair at its (recovered) secondary."""
    for proc in w.secondaries:
        name = proc.name
        items = tuple(
            PairItem(device=p.secondary.device_key)
            for p in w.group.pairs
            if p.secondary_controller == name
        )
        reply = await w.session.channels[name].pair_op(PairOp.TERMINATE, items)
        if any(r.code for r in reply.results):
            raise HarnessError(f"terminate at the secondary {name}: {reply.results}")


async def _suspend_shadow(it: _Iteration) -> None:
    w = it.w
    # An async group over a WAN: at T the seal waits a round trip or two for the updates
    # stamped < T while the host, acknowledged at once, goes on writing stamped >= T.
    for link in w.links:
        link.delay(it.rng.uniform(0.002, 0.006))
    async with it.load() as load:
        await load.wait(it.acks())
        report = await suspend(w.session, w.group)
        it.tally.faults += 1
        await load.wait(load.count + it.acks())  # after T: change-recorded
    it.counted(load)
    it.passed(report.consistent, f"suspend not consistent: {report.to_json()}", secondary=False)
    await it.check(load, Image.SECONDARY, require_all_acked=False, at_ns=report.at_ns)
    await it.check(load, Image.PRIMARY, require_all_acked=True)
    cntlb = w.session.channels["cntlb"]
    items = tuple(
        PairItem(device=s.device_key, peer_device=t.device_key) for s, t in w.tertiaries.items()
    )
    async with recorded([w.secondary]) as recorder:
        reply = await cntlb.pair_op(PairOp.SHADOW, items)
        if any(r.code for r in reply.results):
            raise HarnessError(f"shadow: {[r.message for r in reply.results if r.code]}")
        # The shadow interlock: a resume asked for while a shadow copy reads the secondary
        # must wait for it (refused, or accepted only once the copy is done).
        await run_operation(w.session, w.group, PairOp.RESUME)
        finished = await recorder.wait(
            lambda seen: (
                sum(
                    e.event.kind is EventKind.SHADOW and e.event.detail.get("phase") == "done"
                    for e in seen
                )
                >= len(items)
            ),
            timeout_s=ITERATION_TIMEOUT_S,
        )
        if not finished:
            raise HarnessError(f"shadow copies not done: {[e.event.text for e in recorder.events]}")
    early = _resumed_during_shadow([e.event.text for e in recorder.events], w.tertiaries)
    it.passed(not early, f"resumed while its shadow copy ran: {early}", secondary=False)
    async with it.load() as after:
        await after.wait(it.acks() // 4)
        await _resume_held(w)  # the pairs the interlock held back; the resync races the writes
        await after.wait(after.count + it.acks())
    it.counted(after)
    await it.check(load, Image.SHADOW, require_all_acked=False, at_ns=report.at_ns)
    await until_settled(w)  # async: the secondaries catch up once the writes stop
    await it.check(after, Image.SECONDARY, require_all_acked=True, what="after resume")
    await it.identical("resumed after a suspend at T")


def _resumed_during_shadow(
    lines: list[str], tertiaries: Mapping[HardwareAddress, HardwareAddress]
) -> list[str]:
    """The secondaries whose resume (`SUSPENDED -> PENDING`) came before their shadow copy's
    `done` line, from the secondary controller's event lines in order."""
    early = []
    for secondary in tertiaries:
        name = str(secondary)
        resumed = next(
            (i for i, line in enumerate(lines) if line.startswith(f"pair {name} SUSPENDED ->")),
            None,
        )
        done = next(
            (
                i
                for i, line in enumerate(lines)
                if line.startswith(f"shadow {name} ->") and " done " in line
            ),
            None,
        )
        if resumed is not None and (done is None or resumed < done):
            early.append(name)
    return early


@dataclass(frozen=True, slots=True, kw_only=True)
class _DiskFault:
    """The failing disk of one io_fault iteration: which volume, how, after how many writes."""

    pair: GroupPair
    kind: str
    """eio or enospc."""
    after: int

    def armed(self) -> dict[str, str]:
        """The controller's volume_faults for it."""
        return {self.pair.volser: f"{self.kind}_after:{self.after}"}


def _disk_fault(w: World, settings: CampaignSettings, index: int) -> _DiskFault:
    """Iteration `index`'s disk fault, on one of cntla0's volumes, from a stream of its own.

    Its own stream, so that the iteration before can arm it: a volume fault lasts until the
    controller restarts, and the restart that replaces one iteration's disk arms the next
    one's (one controller restart per iteration instead of two).
    """
    rng = random.Random(f"remcopy-campaign:{settings.seed}:io_fault-disk:{index}")
    proc = w.primaries[0]
    pair = rng.choice([p for p in w.group.pairs if p.primary_controller == proc.name])
    kind = rng.choice(("eio", "enospc"))
    after = rng.randint(settings.acks_min, settings.acks_max) // 4
    return _DiskFault(pair=pair, kind=kind, after=after)


async def _io_fault(it: _Iteration) -> None:
    w = it.w
    fault = _disk_fault(w, it.settings, it.index)
    pair, kind, proc = fault.pair, fault.kind, w.primary_of(fault.pair)
    code = {"eio": errno.EIO, "enospc": errno.ENOSPC}[kind]
    if it.index == 0:  # later iterations find it armed by the restart that ended the last one
        await restart(w, proc, fault.armed())
    # The run ends by itself: every chain meets the failing volume and gives up.
    async with it.load(writes=1_000_000) as load:
        assert load.task is not None
        await load.task
    stats = it.counted(load)
    it.tally.faults += 1
    expected = f"volume {pair.volser}: write failed: {os.strerror(code)} (errno {code})"
    clear = [f for f in stats.failures if f.volume == str(pair.primary) and expected in f.message]
    it.passed(
        bool(stats.failures) and len(clear) == len(stats.failures),
        f"{kind} on {pair.volser}: refusals not as expected: {[f.message for f in stats.failures]}",
        secondary=False,
    )
    # The controller goes on serving its other volumes: a write and a read-back elsewhere.
    channel = w.session.channels[proc.name]
    for other in (p for p in w.group.pairs if p.primary_controller == proc.name and p != pair):
        probe = f"probe {it.index} {other.volser}".encode().ljust(4096, b".")
        await channel.write(other.primary.device_key, VOLUME_BYTES - 4096, probe)
        served = await channel.read(other.primary.device_key, VOLUME_BYTES - 4096, 4096)
        it.passed(served == probe, f"{proc.name} stopped serving {other.volser}", secondary=False)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=f"after {kind}")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what=f"after {kind}")
    # The disk is replaced: a restart without this fault (with the next iteration's armed; it
    # strikes only after writes) resyncs the tracks the refused writes marked, and the pairs
    # are identical again.
    await restart(w, proc, _disk_fault(w, it.settings, it.index + 1).armed())
    await it.identical(f"after {kind} on {pair.volser} and a restart")


# The rolling campaign: a consistency group frozen by its controllers alone...

ROLLING_FAULTS: Final = ("stall", "cut", "sigstop", "kill")
"""stall or cut of one primary's replication link, SIGSTOP of the secondary controller,
kill -9 of one primary controller."""
# How long the harness waits for every reachable pair to leave DUPLEX after the fault. The
# controllers promise detection within ack_timeout_s (1 s here) or heartbeat interval +
# timeout (2.5 s), and a freeze within hold_s (10 s) after it; on a loaded 2-core machine
# a controller can stall for seconds. Past this bound the group did not freeze: a finding
# (the rest of the iteration still checks and repairs), not a harness failure.
FREEZE_WAIT_S: Final = 30.0
_SEALED: Final = (PairState.SUSPENDED, PairState.SUSPENDED_ERROR)


def _left_duplex(events: list[Arrival], addresses: set[str]) -> dict[str, Arrival]:
    """The first STATE event out of DUPLEX of each of these addresses."""
    left: dict[str, Arrival] = {}
    for arrival in events:
        event = arrival.event
        if (
            event.kind is EventKind.STATE
            and event.old is PairState.DUPLEX
            and event.device in addresses
            and event.device not in left
        ):
            left[event.device] = arrival
    return left


def _freeze_lines(events: list[Arrival]) -> list[str]:
    return [
        f"{a.controller}: {a.event.text}"
        for a in events
        if a.event.kind in (EventKind.HOLD, EventKind.FREEZE, EventKind.ARMED)
        or a.event.new in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR)
    ]


async def _query(w: World, procs: list[ControllerProcess]) -> list[tuple[GroupPair, DeviceStatus]]:
    """Each of these controllers' primaries of the group with its QUERY status."""
    out: list[tuple[GroupPair, DeviceStatus]] = []
    for proc in procs:
        pairs = [p for p in w.group.pairs if p.primary_controller == proc.name]
        statuses = await w.session.channels[proc.name].query(
            tuple(p.primary.device_key for p in pairs)
        )
        by_key = {s.device: s for s in statuses}
        out.extend((p, by_key[p.primary.device_key]) for p in pairs)
    return out


def _states_text(found: list[tuple[GroupPair, DeviceStatus]]) -> str:
    return ", ".join(
        f"{p.primary} {s.state.name}" + (f" at={s.suspend_at_ns}" if s.suspend_at_ns else "")
        for p, s in found
    )


async def _repair(w: World) -> None:
    """Resume every pair that is suspended, then wait until every pair is settled in DUPLEX.
    A restarted primary may resync a pair by itself meanwhile: only a pair still suspended
    after a refused resume is a harness failure."""
    stopped = [p for p, s in await _query(w, w.primaries) if s.state in _SEALED]
    if stopped:
        subset = dataclasses.replace(w.group, pairs=tuple(stopped))
        report = await run_operation(w.session, subset, PairOp.RESUME)
        if report.failed:
            still = [p for p, s in await _query(w, w.primaries) if s.state in _SEALED]
            if still:
                succeeded(report, "resume")
    await until_settled(w)


async def _resume_held(w: World) -> None:
    """Resume the pairs still suspended and wait until each announced DUPLEX (under load:
    `until_settled` would wait for a lag of 0 that writes never leave)."""
    stopped = [p for p, s in await _query(w, w.primaries) if s.state in _SEALED]
    if not stopped:
        return
    async with events(w.primaries) as subs:
        subset = dataclasses.replace(w.group, pairs=tuple(stopped))
        succeeded(await run_operation(w.session, subset, PairOp.RESUME), "resume")
        for name, sub in subs.items():
            want = {str(p.primary) for p in stopped if p.primary_controller == name}
            while want:
                event = await sub.wait_until(
                    lambda e: e.kind is EventKind.STATE and e.new is PairState.DUPLEX,
                    timeout_s=ITERATION_TIMEOUT_S,
                )
                want.discard(event.device or "")


async def _inject(w: World, fault: str, victim: int) -> None:
    if fault == "stall":
        w.links[victim].stall()
    elif fault == "cut":
        w.links[victim].cut()
    elif fault == "sigstop":
        w.secondary.pause()
    else:
        await w.primaries[victim].kill()


def _heal(w: World, fault: str, victim: int) -> None:
    if fault in ("stall", "cut"):
        w.links[victim].heal()
    elif fault == "sigstop":
        w.secondary.unpause()


async def _rolling(it: _Iteration) -> None:
    w = it.w
    victim = it.rng.randrange(len(w.primaries))
    fault = it.rng.choice(it.settings.faults or ROLLING_FAULTS)
    acks = it.acks()
    proc = w.primaries[victim]
    what = f"{fault} of {'cntlb' if fault == 'sigstop' else proc.name}"
    if fault in ("stall", "cut"):
        what += "'s link"
    it.tally.faults_done.append(what)
    reachable = [p for p in w.primaries if not (fault == "kill" and p is proc)]
    addresses = {str(p.primary) for p in w.group.pairs if w.primary_of(p) in reachable}
    try:
        async with recorded(w.primaries) as recorder, it.load() as load:
            await load.wait(acks)
            faulted_ns = time.time_ns()
            await _inject(w, fault, victim)
            it.tally.faults += 1
            # Nothing but the controllers acts now: they must find the fault and freeze. A
            # primary's death is no replication error: its unacknowledged writes never
            # happened, so the survivors go on mirroring a consistent cut (no freeze).
            froze = fault == "kill" or await recorder.wait(
                lambda events: len(_left_duplex(events, addresses)) == len(addresses),
                timeout_s=FREEZE_WAIT_S,
            )
            await load.more(acks // 4)  # after T: change-recorded (unless every chain ended)
        it.counted(load)
        if fault == "sigstop":
            w.secondary.unpause()  # the checker reads the secondary
        left = _left_duplex(recorder.events, addresses)
        ignored = _ignored_failures(w, recorder.events, addresses, left)
        it.passed(
            not ignored,
            f"{what}: replication failure ignored: " + "; ".join(ignored),
            secondary=False,
        )
        it.passed(
            froze,
            f"{what}: the group did not freeze: {len(addresses) - len(left)} of "
            f"{len(addresses)} reachable pairs still DUPLEX after {FREEZE_WAIT_S} s "
            f"(events: {_freeze_lines(recorder.events)[:12]})",
            secondary=False,
        )
        _freeze_figures(it, recorder.events, left, load)
        found = await _query(w, reachable)
        report = await it.check(
            load, Image.SECONDARY, require_all_acked=False, what=f"after {what}"
        )
        if fault == "kill":
            await proc.start()  # what the killed primary says about its pairs after restart
            found += await _query(w, [proc])
        _rolling_checks(
            it, load, report, found, faulted_ns=faulted_ns, what=what, frozen=fault != "kill"
        )
        await it.check(load, Image.PRIMARY, require_all_acked=True, what=f"after {what}")
    finally:
        if fault == "sigstop":
            w.secondary.unpause()
        if fault == "kill" and not proc.running:
            await proc.start()
    _heal(w, fault, victim)
    await _repair(w)
    await it.identical(f"resumed after the {what}")


def _ignored_failures(
    w: World, events: list[Arrival], addresses: set[str], left: dict[str, Arrival]
) -> list[str]:
    """The primaries that reported their replication link failed while pairs of theirs
    neither held their writes nor left DUPLEX: the failure went unanswered."""
    secondaries = {proc.name for proc in w.secondaries}
    held = {a.event.device for a in events if a.event.kind is EventKind.HOLD}
    out: dict[str, str] = {}
    for arrival in events:
        event = arrival.event
        if event.kind not in (EventKind.LINK_DOWN, EventKind.HEARTBEAT_LOSS):
            continue
        if event.peer not in secondaries:
            continue
        kept = sorted(
            str(p.primary)
            for p in w.group.pairs
            if p.primary_controller == arrival.controller
            and str(p.primary) in addresses
            and str(p.primary) not in left
            and str(p.primary) not in held
        )
        if kept and arrival.controller not in out:
            out[arrival.controller] = f"{arrival.controller} said {event.text!r}, yet {kept} " + (
                "stayed DUPLEX with no hold"
            )
    return list(out.values())


def _freeze_figures(
    it: _Iteration, events: list[Arrival], left: dict[str, Arrival], load: Load
) -> None:
    """The freeze window (first hold line to the last pair sealed, arrival times at the
    harness) and the host writes that overlapped it."""
    holds = [a.arrived_ns for a in events if a.event.kind is EventKind.HOLD]
    if not holds or not left:
        return
    start_ns, end_ns = min(holds), max(e.arrived_ns for e in left.values())
    it.tally.freeze_ms.append((end_ns - start_ns) / 1e6)
    overlapping = [(s, a) for s, a in load.acked if s <= end_ns and a >= start_ns]
    it.tally.freeze_write_latencies_ms.extend((a - s) / 1e6 for s, a in overlapping)
    it.tally.freeze_issued_latencies_ms.extend(
        (a - s) / 1e6 for s, a in overlapping if s >= start_ns
    )


def _rolling_checks(
    it: _Iteration,
    load: Load,
    report: CheckReport,
    found: list[tuple[GroupPair, DeviceStatus]],
    *,
    faulted_ns: int,
    what: str,
    frozen: bool,
) -> None:
    # One T: every pair of the group SUSPENDED or SUSPENDED_ERROR at the same suspend time
    # (after a replication error; a primary's death leaves the others mirroring).
    stamps = {s.suspend_at_ns for _, s in found}
    one_t = all(s.state in _SEALED for _, s in found) and len(stamps) == 1 and 0 not in stamps
    if frozen:
        it.passed(
            one_t,
            f"{what}: the group is not frozen at one T: {_states_text(found)}",
            secondary=False,
        )
    # Sync: a write acknowledged before the fault was on the secondary when it was
    # acknowledged; a freeze never takes it back. Absent: after its chain's prefix, or a
    # hole inside it (as `_Iteration.check` counts them).
    log = read_log(load.log_path)
    holes = {(v.chain, v.seq) for v in report.violations if v.reason in _ACKED_WRITE_ABSENT}
    lost = []
    for chain in report.chains:
        early = [x for x in log.chain(chain.chain) if x.acked_ns < faulted_ns]
        lost += [x for x in early if x.seq > chain.prefix or (x.chain, x.seq) in holes]
    it.tally.acked_lost += len(lost)
    it.passed(
        not lost,
        f"{what}: {len(lost)} writes acknowledged before the fault are absent from the "
        + "secondary; first: "
        + ", ".join(f"chain {x.chain} seq {x.seq} at {x.volume}" for x in lost[:3]),
        secondary=True,
    )
    # The cut is no later than T: no write stamped at or after T reached a secondary.
    if one_t:
        (at_ns,) = stamps
        late = [c for c in report.chains if c.prefix and c.prefix_stamp_ns >= at_ns]
        it.passed(
            not late,
            f"{what}: writes stamped at or after the freeze's T={at_ns} reached the "
            "secondary: "
            + ", ".join(
                f"chain {c.chain} seq {c.prefix} {(c.prefix_stamp_ns - at_ns) / 1e6:.3f} ms after T"
                for c in late[:3]
            ),
            secondary=True,
        )


_Campaign = Callable[[_Iteration], Awaitable[None]]
_RUNS: Final[dict[str, tuple[_Campaign, Shape]]] = {
    "kill_primary": (_kill_primary, Shape(links=True)),
    "kill_secondary": (_kill_secondary, Shape(consistency_group=False)),
    "link_fault": (
        _link_fault,
        Shape(links=True, primary_settings=(("ack_timeout_s", ACK_TIMEOUT_S),)),
    ),
    "suspend_shadow": (_suspend_shadow, Shape(links=True, mode=CopyMode.ASYNC)),
    "io_fault": (_io_fault, Shape(consistency_group=False)),
    "rolling": (
        _rolling,
        Shape(primaries=3, links=True, primary_settings=(("ack_timeout_s", ACK_TIMEOUT_S),)),
    ),
    "async_disaster": (
        _async_disaster,
        Shape(primaries=3, secondaries=2, links=True, mode=CopyMode.ASYNC),
    ),
}


async def run_campaign(name: str, root: Path, settings: CampaignSettings) -> CampaignResult:
    """Run one campaign for `settings.iterations` iterations in a world under `root`."""
    if name not in _RUNS:
        raise HarnessError(f"unknown campaign {name!r}: expected one of {', '.join(CAMPAIGNS)}")
    campaign, shape = _RUNS[name]
    tally = _Tally()
    started = time.perf_counter()
    harness_error = ""
    try:
        async with world(
            root,
            shape,
            planted_bugs=settings.planted_bugs,
            planted_bug_every=settings.planted_bug_every,
        ) as w:
            for index in range(settings.iterations):
                it = _Iteration(w, name, index, settings, tally)
                async with asyncio.timeout(ITERATION_TIMEOUT_S):
                    await campaign(it)
                tally.iterations += 1
                if settings.progress is not None:
                    settings.progress(
                        f"{name} iteration {index}: checks {tally.passed}/{tally.checks}"
                    )
                if settings.stop_on_detection and tally.findings:
                    break
    except (RemcopyError, TimeoutError, OSError) as exc:
        harness_error = f"iteration {tally.iterations}: {type(exc).__name__}: {exc}"
    return CampaignResult(
        campaign=name,
        seed=settings.seed,
        iterations=tally.iterations,
        faults_injected=tally.faults,
        checks=tally.checks,
        checks_passed=tally.passed,
        acked_writes_lost=tally.acked_lost,
        inconsistent_secondaries=tally.inconsistent,
        writes_acked=tally.writes,
        elapsed_s=time.perf_counter() - started,
        planted_bugs=settings.planted_bugs,
        findings=tuple(tally.findings),
        harness_error=harness_error,
        faults=tuple(tally.faults_done),
        freeze_ms=tuple(tally.freeze_ms),
        freeze_write_latencies_ms=tuple(tally.freeze_write_latencies_ms),
        freeze_issued_latencies_ms=tuple(tally.freeze_issued_latencies_ms),
    )


async def hunt_planted_bug(
    bug: str, campaign: str, root: Path, *, seed: int, iterations: int
) -> CampaignResult:
    """Run a campaign against controllers with one planted bug, until a check fails."""
    if bug not in PLANTED_BUGS:
        raise HarnessError(f"unknown planted bug {bug!r}: expected one of {PLANTED_BUGS}")
    settings = CampaignSettings(
        iterations=iterations,
        seed=seed,
        planted_bugs=(bug,),
        planted_bug_every=PLANTED_BUG_EVERY[bug],
        stop_on_detection=True,
        # The faults that can show it, in the campaign it is expected to be caught by.
        faults=HUNT_FAULTS.get(bug, ()) if campaign == CATCHERS[bug][0] else (),
    )
    return await run_campaign(campaign, root, settings)


def caught_as_expected(result: CampaignResult) -> bool:
    """A hunt found its planted bug for the reason that bug breaks (CAUGHT_FOR), and the
    harness itself did not fail."""
    if result.harness_error or not result.findings or len(result.planted_bugs) != 1:
        return False
    bug = result.planted_bugs[0]
    found = [text in result.findings[0] for text in CAUGHT_FOR[bug]]
    return all(found) if bug in CAUGHT_FOR_ALL else any(found)


# Detection with no host writes: link death to the first sign of it...

DETECTION_FAULTS: Final = ("stall", "cut", "sigstop")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionResult:
    """How long the controllers took to notice a dead link with no host write at all."""

    seed: int
    faults: tuple[str, ...]
    detect_ms: tuple[float, ...]
    """Per fault detected: injection to the first `hold` or `-> SUSPENDED_ERROR` line, as
    it reached the harness (heartbeats find it: nothing else is sent)."""
    findings: tuple[str, ...] = ()
    """Faults not detected, or not ending in a freeze, within FREEZE_WAIT_S."""
    harness_error: str = ""


def _detected(arrival: Arrival) -> bool:
    event = arrival.event
    return event.kind is EventKind.HOLD or event.new is PairState.SUSPENDED_ERROR


async def _detect_once(w: World, fault: str, victim: int) -> tuple[float | None, str]:
    """Inject one fault into the idle world; the milliseconds to its first sign (None: not
    seen in time), and what went wrong after it ("" when the group froze)."""
    addresses = {str(p.primary) for p in w.group.pairs}
    try:
        async with recorded(w.primaries) as recorder:
            faulted_ns = time.time_ns()
            await _inject(w, fault, victim)
            await recorder.wait(
                lambda events: any(_detected(e) for e in events), timeout_s=FREEZE_WAIT_S
            )
            froze = await recorder.wait(
                lambda events: len(_left_duplex(events, addresses)) == len(addresses),
                timeout_s=FREEZE_WAIT_S,
            )
    finally:
        _heal(w, fault, victim)
    first = next((e for e in recorder.events if _detected(e)), None)
    detect_ms = None if first is None else (first.arrived_ns - faulted_ns) / 1e6
    problem = "" if froze else f"did not freeze: {_freeze_lines(recorder.events)[:12]}"
    return detect_ms, problem


async def measure_detection(root: Path, *, iterations: int, seed: int) -> DetectionResult:
    """In the rolling campaign's world, settled and idle, inject one fault per iteration
    (link stall, link cut, secondary SIGSTOP) and time it to the first hold line; freeze,
    heal and resume between iterations."""
    _, shape = _RUNS["rolling"]
    faults: list[str] = []
    detect_ms: list[float] = []
    findings: list[str] = []
    harness_error = ""
    try:
        async with world(root, shape) as w:
            for index in range(iterations):
                rng = random.Random(f"remcopy-detection:{seed}:{index}")
                victim = rng.randrange(len(w.primaries))
                fault = rng.choice(DETECTION_FAULTS)
                what = f"{fault} of {'cntlb' if fault == 'sigstop' else w.primaries[victim].name}"
                faults.append(what)
                async with asyncio.timeout(ITERATION_TIMEOUT_S):
                    ms, problem = await _detect_once(w, fault, victim)
                    await _repair(w)
                if ms is None:
                    findings.append(f"{what}: not detected within {FREEZE_WAIT_S} s")
                else:
                    detect_ms.append(ms)
                if problem:
                    findings.append(f"{what}: {problem}")
    except (RemcopyError, TimeoutError, OSError) as exc:
        harness_error = f"iteration {len(faults) - 1}: {type(exc).__name__}: {exc}"
    return DetectionResult(
        seed=seed,
        faults=tuple(faults),
        detect_ms=tuple(detect_ms),
        findings=tuple(findings),
        harness_error=harness_error,
    )


__all__ = [
    "ASYNC_FAULTS",
    "CAMPAIGNS",
    "CATCHERS",
    "CAUGHT_FOR",
    "CAUGHT_FOR_ALL",
    "PLANTED_BUGS",
    "PLANTED_BUG_EVERY",
    "CampaignResult",
    "CampaignSettings",
    "DETECTION_FAULTS",
    "DetectionResult",
    "HUNT_FAULTS",
    "HarnessError",
    "ROLLING_FAULTS",
    "caught_as_expected",
    "hunt_planted_bug",
    "measure_detection",
    "run_campaign",
]
