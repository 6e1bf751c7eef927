# The controller's core: its devices, their volumes and pair states, and the host I/O verbs.
#
# Why: the network shell (server.py) only moves bytes; everything a controller *decides* lives
# here, callable without sockets — which device a key names, whether a host may reach it,
# whether its state permits a write, what identify and query answer, which state changes are
# committed and announced.
#
# Rules this module keeps:
# - A device is addressed inside the controller by its key, LSS << 8 | CCA (HardwareAddress
#   .device_key). A device the host's entry does not allow is DeviceNotAllowed, whether it
#   exists or not (a host learns nothing outside its grant); a device of the grant we do not
#   own is DeviceNotFound. Both checks happen before any volume I/O. Status, identify and
#   query name only the devices of the asking host's grant.
# - Pair states change only through `commit_states`, which computes every new state first
#   (states.next_state), hands the changed devices to the writer thread (committer.py) and
#   applies them in memory at once, so the next commit builds on them; one STATE event per
#   changed device is recorded once the commit is durable. A refused batch changes nothing.
# - A device whose commit is not durable yet is `committing`: host writes to it wait for the
#   commit (replication.host_write), and whoever answers a host or a peer about it awaits
#   the commit first. Devices outside the commit never wait for it.
# - Every event goes through `emit_all`: numbered (controller/eventlog.py), logged, and handed
#   to each subscriber's sink; whether a subscriber may see an event is decided in
#   controller/eventscope.py.
# - Host writes to a device whose role is SECONDARY are refused unless it is RECOVERED.
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remcopy.controller import atrest
from remcopy.controller.committer import StateWriter
from remcopy.controller.config import ControllerConfig, HostSection, load_controller_config
from remcopy.controller.eventlog import EventLog
from remcopy.controller.latency import Latency
from remcopy.controller.pairstore import STORE_FILE_NAME, PairStore
from remcopy.controller.volume import Volume
from remcopy.errors import (
    ConfigError,
    DeviceNotAllowed,
    DeviceNotFound,
    NotOffered,
    RemcopyError,
    RemcopyInternalError,
    WriteProtected,
)
from remcopy.events import Event, EventKind
from remcopy.ids import HardwareAddress, Volser
from remcopy.states import (
    CopyMode,
    FencePolicy,
    PairAction,
    PairRole,
    PairState,
    event_line_tail,
    next_state,
)
from remcopy.wire.native import EVENT_TEXT_MAX_CHARS, DeviceIdentity, DeviceStatus

log = logging.getLogger("remcopy.controller")

STATE_FILE_NAME = "pairs.json"
"""The JSON state file of earlier controllers; imported by the pair store at start."""
STATE_FORMAT = 1


@dataclass(slots=True, kw_only=True)
class PairInfo:
    """What a controller persists about one device's pair."""

    state: PairState = PairState.SIMPLEX
    role: PairRole = PairRole.NONE
    mode: CopyMode | None = None
    peer_serial: int = 0
    peer_device: int = 0
    suspend_at_ns: int = 0
    """Armed suspend time T while DUPLEX/PENDING; the time suspended at once SUSPENDED."""
    fence: FencePolicy = FencePolicy.NEVER
    consistency_group: bool = False
    group: str = ""
    """The consistency group's name (establish); its members are in Controller.groups."""
    changed_at_ns: int = 0
    """When the state last changed (the commit's time: T for a suspend or freeze); 0 when
    not known (a pair last changed by a controller that did not keep it)."""
    change_cause: str = ""
    """What caused the last state change (commit_states' cause: suspend, replication-error,
    copy-done, ...); "" when not known."""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "role": self.role.value,
            "mode": self.mode.value if self.mode else None,
            "peer_serial": self.peer_serial,
            "peer_device": self.peer_device,
            "suspend_at_ns": self.suspend_at_ns,
            "fence": self.fence.value,
            "consistency_group": self.consistency_group,
            "group": self.group,
            "changed_at_ns": self.changed_at_ns,
            "change_cause": self.change_cause,
        }

    def copy(self) -> PairInfo:
        """A copy to change (one constructor call: a fifth of what dataclasses.replace costs,
        on a path that copies 1,250 at once)."""
        return PairInfo(
            state=self.state,
            role=self.role,
            mode=self.mode,
            peer_serial=self.peer_serial,
            peer_device=self.peer_device,
            suspend_at_ns=self.suspend_at_ns,
            fence=self.fence,
            consistency_group=self.consistency_group,
            group=self.group,
            changed_at_ns=self.changed_at_ns,
            change_cause=self.change_cause,
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PairInfo:
        return cls(
            state=PairState(doc["state"]),
            role=PairRole(doc["role"]),
            mode=CopyMode(doc["mode"]) if doc.get("mode") else None,
            peer_serial=int(doc.get("peer_serial", 0)),
            peer_device=int(doc.get("peer_device", 0)),
            suspend_at_ns=int(doc.get("suspend_at_ns", 0)),
            fence=FencePolicy(doc.get("fence", "never")),
            consistency_group=bool(doc.get("consistency_group", False)),
            group=str(doc.get("group", "")),
            changed_at_ns=int(doc.get("changed_at_ns") or 0),
            change_cause=str(doc.get("change_cause") or ""),
        )


@dataclass(slots=True, kw_only=True)
class Device:
    address: HardwareAddress
    volume: Volume
    pair: PairInfo = field(default_factory=PairInfo)
    committing: asyncio.Future[None] | None = None
    """The commit of this device's pair state while it is not durable yet (else None)."""
    label: str = field(init=False, repr=False)
    """str(address), made once: a commit or an answer about thousands of devices names
    each of them."""

    def __post_init__(self) -> None:
        self.label = str(self.address)

    @property
    def key(self) -> int:
        return self.address.device_key

    def __repr__(self) -> str:
        return f"<Device {self.address} {self.volume.volser} {self.pair.state.name}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGrant:
    """What one host may reach on this controller (None: every device)."""

    name: str
    secret: bytes
    lss: frozenset[int] | None
    is_peer: bool = False
    """A peer controller (replication link), not a host."""
    serial: int = 0

    def allows(self, device: int) -> bool:
        return self.lss is None or (device >> 8) in self.lss

    @classmethod
    def from_section(cls, section: HostSection) -> HostGrant:
        return cls(
            name=section.name,
            secret=section.secret.encode(),
            lss=frozenset(section.lss) if section.lss is not None else None,
        )


_Move = tuple[str, PairState, PairState, str]
"""A device's state change to announce: (address, old, new, consistency group)."""


@dataclass(slots=True, kw_only=True)
class StatePlan:
    """A commit of pair states computed and not made (Controller.plan_states)."""

    basis: dict[int, PairInfo]
    """Each device's pair as it was when the plan was made."""
    new_pairs: dict[int, PairInfo]
    documents: dict[int, dict[str, Any] | None]
    """What the pair store is given for each device (None: its row goes)."""
    moves: list[_Move]
    tails: dict[tuple[PairState, PairState], str]
    cause: str
    at_ns: int
    tags: dict[str, str]

    def holds(self, devices: Mapping[int, Device]) -> bool:
        """Whether every device of the plan still holds the pair it was made from (a
        commit replaces a device's PairInfo; only an arm or disarm changes one in place,
        and only its suspend_at_ns)."""
        return all(devices[key].pair is pair for key, pair in self.basis.items())


EventSink = Callable[[Event], None]
# A batch of events is logged as one record naming at most this many of them (a suspend of
# 1,250 devices is 1,250 events; every one is in the event log, events.jsonl).
_EVENTS_LOGGED_MAX = 4


class Controller:
    """The devices of one controller and the verbs hosts use on them."""

    def __init__(self, config: ControllerConfig, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.name = config.controller.name
        self.serial = config.controller.serial
        self.data_dir = config.controller.data_dir
        self.devices: dict[int, Device] = {}
        self.hosts = {h.name: HostGrant.from_section(h) for h in config.hosts}
        self.peers = {p.name: p for p in config.peers}
        self._store: PairStore | None = None
        self._writer: StateWriter | None = None
        self.groups: dict[str, tuple[int, ...]] = {}
        """Consistency groups with devices here -> their primary controllers' serials (given
        at establish, persisted): the siblings a freeze must reach."""
        self._sinks: list[EventSink] = []
        self._announcing: collections.deque[Callable[[], None]] = collections.deque()
        self.pairs_generation = 0
        """Counts changes of any device's pair in memory (apply_plan, commit_armed): what is
        derived from every pair (the peers a periodic task serves) is kept until it moves."""
        """Durable commits whose events are not announced yet, in commit order."""
        self._announce_soon = False
        self._handing: collections.deque[tuple[list[Event], list[EventSink]]] = collections.deque()
        """Recorded events not yet written to the log file and handed to subscribers."""
        self._event_log: EventLog | None = None
        self.started_ns = time.time_ns()
        self.counters: dict[str, int] = {
            "requests": 0,
            "reads": 0,
            "writes": 0,
            "flushes": 0,
            "identifies": 0,
            "queries": 0,
            "pair_ops": 0,
            "errors": 0,
            "auth_refused": 0,
            "connections": 0,
            "state_commits": 0,
        }
        self.commit_latency = Latency()
        """Seconds per durable state commit (the pair store's transaction)."""
        self.io_latency = {"read": Latency(), "write": Latency()}
        """Seconds from a host's read or write request to its answer (controller/server.py)."""

    def __repr__(self) -> str:
        return f"<Controller {self.name} serial={self.serial} devices={len(self.devices)}>"

    def reconfigure(self, config: ControllerConfig) -> None:
        """Run with a reloaded config (controller/reload.py decided what of it changes live):
        its hosts and peers take effect for the next authentication."""
        self.config = config
        self.hosts = {h.name: HostGrant.from_section(h) for h in config.hosts}
        self.peers = {p.name: p for p in config.peers}

    # Opening and closing...

    @classmethod
    def from_config_file(cls, path: Path) -> Controller:
        controller = cls(load_controller_config(path), config_path=path)
        controller.open()
        return controller

    def open(self) -> None:
        """Open every volume (formatting missing ones when allowed) and load pair states."""
        cfg = self.config
        testing = cfg.testing()
        if testing:
            log.warning(
                "TESTING ONLY switches are on (never in production): %s",
                " ".join(f"{key}={value}" for key, value in testing.items()),
            )
        try:
            atrest.make_folder(self.data_dir)
        except OSError as exc:
            raise ConfigError(
                f"controller.data_dir: cannot create {self.data_dir}: {exc.strerror}"
            ) from exc
        self._warn_exposed([cfg.volume_path(section) for section in cfg.volumes])
        self._event_log = EventLog(self.data_dir)
        problems: list[str] = []
        for i, section in enumerate(cfg.volumes):
            path = cfg.volume_path(section)
            address = HardwareAddress.of(
                serial=self.serial, ssid=cfg.ssid_of(section.lss), lss=section.lss, cca=section.cca
            )
            try:
                if not path.exists() and cfg.controller.format_missing:
                    volume = Volume.create(
                        path,
                        volser=Volser.parse(section.volser),
                        tracks=section.size // cfg.controller.track_size,
                        track_size_bytes=cfg.controller.track_size,
                    )
                    log.info("volume %s formatted file=%s", section.volser, path)
                else:
                    volume = Volume.open(path)
            except RemcopyError as exc:
                problems.append(f"volumes[{i}].file: {exc}")
                continue
            if volume.capacity_bytes < section.size:
                problems.append(
                    f"volumes[{i}].size: file {path} holds {volume.capacity_bytes} "
                    f"bytes, less than the configured {section.size}"
                )
            if str(volume.volser) != section.volser:
                log.warning(
                    "volume %s: label says %s; the label wins", section.volser, volume.volser
                )
            self.devices[address.device_key] = Device(address=address, volume=volume)
        if problems:
            self.close()
            source = str(self.config_path) if self.config_path else "config"
            raise ConfigError(
                f"{source}: cannot open volumes" + "".join(f"\n  {p}" for p in problems), problems
            )
        self._load_states()

    def _warn_exposed(self, volume_paths: list[Path]) -> None:
        """One warning for existing files group or others may access: they are left as they
        are (the administrator's to change, docs/security.md), but never silently."""
        loose = atrest.exposed([self.data_dir, *volume_paths])
        if loose:
            log.warning(
                "%d files or folders are accessible by group or others (data at rest should "
                "be 0600 in 0700 folders; remcopy does not change them): %s: fix with "
                "chmod 700 on folders and chmod 600 on files",
                len(loose),
                " ".join(str(p) for p in loose[:5]) + (" ..." if len(loose) > 5 else ""),
            )

    def close(self) -> None:
        for device in self.devices.values():
            device.volume.close()
        if self._store is not None:
            self._store.close()
            self._store = None
            self._writer = None
        if self._event_log is not None:
            self._announce_all()  # durable commits whose events were still to announce
            self._event_log.close()
            self._event_log = None

    @property
    def state_path(self) -> Path:
        return self.data_dir / STORE_FILE_NAME

    @property
    def store(self) -> PairStore:
        if self._store is None:
            raise self._not_open()
        return self._store

    @property
    def writer(self) -> StateWriter:
        """The pair-state writer (its task runs in the server's TaskGroup)."""
        if self._writer is None:
            raise self._not_open()
        return self._writer

    def _not_open(self) -> RemcopyInternalError:
        return RemcopyInternalError(
            f"controller {self.name}: pair state used before open(): this should never happen"
        )

    def _load_states(self) -> None:
        self._store = PairStore(self.data_dir, serial=self.serial)
        self._writer = StateWriter(self._store, pause_dir=self.config.controller.commit_pause_dir)
        documents, groups = self.store.load()
        self.groups = {name: tuple(members) for name, members in groups.items()}
        for key, pair_doc in documents.items():
            device = self.devices.get(key)
            if device is None:
                log.warning("pair state names device %04X which is no longer configured", key)
                continue
            device.pair = PairInfo.from_json(pair_doc)

    def _save_states(
        self,
        pairs: Mapping[int, PairInfo],
        groups: Mapping[str, tuple[int, ...]] | None = None,
        *,
        hold_writes: bool = True,
        documents: Mapping[int, dict[str, Any] | None] | None = None,
    ) -> asyncio.Future[None] | None:
        """Submit the changed devices' pair documents (and groups) for one durable commit
        whose cost follows what changed, not how many devices are paired; they are applied in
        memory by the caller at once. Returns the commit's future (None: durable already).
        `documents`: the pairs' documents made already (a prepared plan)."""
        started = time.perf_counter()
        pending = self.writer.submit(
            _documents(pairs) if documents is None else documents,
            {name: list(members) for name, members in (groups or {}).items()},
        )
        self._submitted(started, pending, rows=len(pairs))
        if pending is not None and hold_writes:
            for key in pairs:
                self.devices[key].committing = pending
            pending.add_done_callback(lambda _: self._committed(pairs, pending))
        return pending

    def _submitted(
        self, started: float, pending: asyncio.Future[None] | None, *, rows: int
    ) -> None:
        """Count a commit and time it from submitted to durable (what it costs whoever waits
        for it)."""
        if pending is None:
            self.commit_latency.observe(time.perf_counter() - started)
        else:
            pending.add_done_callback(
                lambda _: self.commit_latency.observe(time.perf_counter() - started)
            )
        self.counters["state_commits"] += 1
        self.counters["state_rows"] = self.counters.get("state_rows", 0) + rows

    def _committed(self, keys: Iterable[int], pending: asyncio.Future[None]) -> None:
        for key in keys:
            device = self.devices[key]
            if device.committing is pending:
                device.committing = None

    # Events...

    @property
    def event_log(self) -> EventLog:
        if self._event_log is None:
            raise RemcopyInternalError(
                f"controller {self.name}: event used before open(): this should never happen"
            )
        return self._event_log

    def add_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: EventSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def emit(self, kind: EventKind, text: str, **fields: Any) -> None:
        """Record one event (see emit_all); `fields` are Event fields (device, peer, ...)."""
        self.emit_all([Event(kind=kind, text=text, **fields)])

    def emit_all(self, drafts: list[Event]) -> None:
        """Number, keep, log and hand out events (a batch of pairs changing together).

        The drafts' kind and fields are kept; their number, serial, controller name and time
        are set here, and the batch is one log record. Writing them to the event log file and
        sending them to the subscribers of this moment happen at the end of this loop step,
        after the answer that caused them is queued (a 1,250-device suspend is 1,250 events:
        encoding them costs tens of milliseconds, which its answer does not wait for)."""
        if not drafts:
            return
        self._announce_all()  # the events of commits durable earlier come first
        now_ns = time.time_ns()
        first = self.event_log.last_seq + 1
        self._record(
            [
                _numbered(
                    draft, seq=first + i, serial=self.serial, controller=self.name, now_ns=now_ns
                )
                for i, draft in enumerate(drafts)
            ]
        )

    def _emit_states(
        self,
        moves: list[_Move],
        text_tails: Mapping[tuple[PairState, PairState], str],
        *,
        cause: str,
        at_ns: int,
        tags: dict[str, str],
    ) -> None:
        """One STATE event per device of a durable commit, numbered as they are made (no
        draft to copy), their text's tail formatted once per kind of move (a suspend of
        1,250 devices is 1,250 events)."""
        if not moves:
            return
        now_ns = time.time_ns()
        seq = self.event_log.last_seq
        serial, name = self.serial, self.name
        events = []
        for address, old, new, group in moves:
            seq += 1
            events.append(
                Event(
                    kind=EventKind.STATE,
                    seq=seq,
                    serial=serial,
                    controller=name,
                    time_ns=now_ns,
                    text=f"pair {address}{text_tails[old, new]}"[:EVENT_TEXT_MAX_CHARS],
                    device=address,
                    old=old,
                    new=new,
                    cause=cause,
                    at_ns=at_ns,
                    group=group,
                    detail=tags,
                )
            )
        self._record(events)

    def _record(self, events: list[Event]) -> None:
        """Keep, log and hand out numbered events (see emit_all)."""
        event_log = self.event_log
        first = events[0].seq
        event_log.record(events)
        if len(events) == 1:
            log.info("event %d: %s", first, events[0].text)
        else:
            shown = "; ".join(e.text for e in events[:_EVENTS_LOGGED_MAX])
            more = len(events) - _EVENTS_LOGGED_MAX
            log.info(
                "events %d..%d: %s%s",
                first,
                events[-1].seq,
                shown,
                f"; and {more} more (in {event_log.path.name})" if more > 0 else "",
            )
        # A later subscriber finds these in the log instead.
        self._handing.append((events, list(self._sinks)))
        if len(self._handing) > 1:
            return  # handed out with those recorded before
        try:
            asyncio.get_running_loop().call_soon(self._hand_out)
        except RuntimeError:  # no event loop (a tool, a unit test): now
            self._hand_out()

    def _hand_out(self) -> None:
        """Write recorded events to the log file and hand them to subscribers, in order."""
        while self._handing:
            events, sinks = self._handing.popleft()
            if self._event_log is None:  # closed since: closing wrote them
                continue
            self._event_log.write()
            for sink in sinks:
                if sink in self._sinks:  # not gone since
                    for event in events:
                        sink(event)

    # Committing state changes...

    def commit_states(
        self,
        changes: Mapping[int, tuple[PairAction, Callable[[PairInfo], None] | None]],
        *,
        cause: str,
        at_ns: int | None = None,
        groups: Mapping[str, tuple[int, ...]] | None = None,
        hold_writes: bool = True,
        **tags: str,
    ) -> asyncio.Future[None] | None:
        """Apply actions to devices all-or-nothing: compute, validate, submit, apply; the
        event lines follow once durable. Returns the commit's future (None: durable already);
        `commit` awaits it.

        Each change is (action, update) where update adjusts the new PairInfo's other fields.
        `groups` sets consistency-group memberships in the same durable write (establish).
        `hold_writes=False`: host writes to these devices need not wait for the commit,
        because they are treated alike before and after it (the seal: armed at T and
        SUSPENDED at T both record writes stamped >= T and refuse those stamped < T).
        Raises IllegalTransition (nothing changed) if any device's state forbids its action.
        """
        return self.apply_plan(
            self.plan_states(changes, cause=cause, at_ns=at_ns, **tags),
            groups=groups,
            hold_writes=hold_writes,
        )

    def plan_states(
        self,
        changes: Mapping[int, tuple[PairAction, Callable[[PairInfo], None] | None]],
        *,
        cause: str,
        at_ns: int | None = None,
        **tags: str,
    ) -> StatePlan:
        """What commit_states would write and announce, computed and changing nothing:
        `apply_plan` makes it, while every device still holds the pair it was computed from
        (a suspend plans its seal when it arms, so that at T only the commit is left).
        Raises IllegalTransition if any device's state forbids its action."""
        basis = {key: self.device(key).pair for key in changes}
        new_pairs = {key: pair.copy() for key, pair in basis.items()}
        changed_at_ns = at_ns or time.time_ns()
        moves: list[_Move] = []
        tails: dict[tuple[PairState, PairState], str] = {}
        for key, (action, update) in changes.items():
            device = self.devices[key]
            info = new_pairs[key]
            old = info.state
            info.state = new = next_state(old, action, device=device.label)
            if update is not None:
                update(info)
            if new is not old:
                info.changed_at_ns, info.change_cause = changed_at_ns, cause
                if (old, new) not in tails:
                    tails[old, new] = event_line_tail(old, new, cause=cause, at_ns=at_ns, **tags)
                moves.append((device.label, old, new, info.group))
        return StatePlan(
            basis=basis,
            new_pairs=new_pairs,
            documents=_documents(new_pairs),
            moves=moves,
            tails=tails,
            cause=cause,
            at_ns=at_ns or 0,
            tags=tags,
        )

    def apply_plan(
        self,
        plan: StatePlan,
        *,
        groups: Mapping[str, tuple[int, ...]] | None = None,
        hold_writes: bool = True,
    ) -> asyncio.Future[None] | None:
        """Make a plan of plan_states (see commit_states): submit, apply in memory, and
        announce once durable. Its devices must still hold the plan's basis (`plan.holds`)."""
        assert plan.holds(self.devices), "a plan applied after its devices changed"
        pending = self._save_states(
            plan.new_pairs, groups, hold_writes=hold_writes, documents=plan.documents
        )
        if groups:
            self.groups = {**self.groups, **groups}
        for key, info in plan.new_pairs.items():
            self.devices[key].pair = info
        self.pairs_generation += 1
        if not plan.moves:
            return pending

        def announce() -> None:
            self._emit_states(
                plan.moves, plan.tails, cause=plan.cause, at_ns=plan.at_ns, tags=plan.tags
            )

        if pending is None:
            self._announcing.append(announce)
            self._announce_all()
        else:
            pending.add_done_callback(lambda f: self._if_durable(f, announce))
        return pending

    async def commit(
        self,
        changes: Mapping[int, tuple[PairAction, Callable[[PairInfo], None] | None]],
        *,
        cause: str,
        at_ns: int | None = None,
        groups: Mapping[str, tuple[int, ...]] | None = None,
        hold_writes: bool = True,
        **tags: str,
    ) -> None:
        """commit_states, returning once the commit is durable."""
        pending = self.commit_states(
            changes, cause=cause, at_ns=at_ns, groups=groups, hold_writes=hold_writes, **tags
        )
        if pending is not None:
            await pending

    def _if_durable(self, done: asyncio.Future[None], announce: Callable[[], None]) -> None:
        """A commit is durable: its events are announced after those of every earlier
        commit, at the end of this loop step, so whoever awaited the commit goes on first (a
        seal tells its secondaries before numbering 1,250 events; any other event recorded
        meanwhile announces them first: the numbering stays in commit order)."""
        if done.cancelled() or done.exception() is not None:
            return
        self._announcing.append(announce)
        if not self._announce_soon:
            self._announce_soon = True
            asyncio.get_running_loop().call_soon(self._announce_all)

    def announce_durable(self) -> None:
        """Announce and hand out now the events of commits that are durable already: a host
        write that waited for a commit is answered after that commit's events (a host sees
        the state change before the reply it caused), while whoever awaited the commit itself
        (a seal telling its secondaries) still went on first."""
        self._announce_all()
        self._hand_out()

    def _announce_all(self) -> None:
        self._announce_soon = False
        while self._announcing:
            self._announcing.popleft()()

    def commit_armed(self, armed: dict[int, int]) -> asyncio.Future[None] | None:
        """Persist armed suspend times (device -> T) without a state change; applied in
        memory at once. Returns the commit's future (None: durable already). Host writes
        need not wait for it: before T an armed device mirrors a write as an unarmed one
        does, and a write stamped >= T before the arm is durable is change-recorded, which
        a restart finds (a DUPLEX pair with marked tracks is resynced)."""
        # Only T changes: the store writes that one field (one statement per T), not each
        # device's whole document.
        started = time.perf_counter()
        pending = self.writer.submit({}, armed=dict(armed))
        self._submitted(started, pending, rows=len(armed))
        for key, at_ns in armed.items():
            self.devices[key].pair.suspend_at_ns = at_ns
        self.pairs_generation += 1
        return pending

    def hold_writes(self, keys: Iterable[int]) -> asyncio.Future[None] | None:
        """Make host writes to these devices wait (as for a commit) until release_writes:
        a resume holds them while it asks the secondary, so that "nothing to copy" is still
        true when it commits."""
        keys = list(keys)
        if not keys:
            return None
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            if self.devices[key].committing is None:
                self.devices[key].committing = gate
        return gate

    def release_writes(self, keys: Iterable[int], gate: asyncio.Future[None] | None) -> None:
        if gate is None:
            return
        for key in keys:
            if self.devices[key].committing is gate:
                self.devices[key].committing = None
        gate.set_result(None)

    async def settled(self) -> None:
        """Return once every state change made so far is durable."""
        await self.writer.settled()

    # Looking devices up...

    def device(self, key: int) -> Device:
        device = self.devices.get(key)
        if device is None:
            raise DeviceNotFound(
                f"controller {self.name} (serial {self.serial}): no device "
                f"LSS {key >> 8:02X} CCA {key & 0xFF:02X}"
            )
        return device

    def device_for_host(self, host: HostGrant, key: int) -> Device:
        # The grant first: a device outside it is refused the same whether it exists or not,
        # so a host learns nothing about the devices it may not reach.
        if not host.allows(key):
            raise DeviceNotAllowed(
                f"host {host.name}: LSS {key >> 8:02X} CCA {key & 0xFF:02X} is not in the "
                f"host's grant on controller {self.name}"
            )
        return self.device(key)

    def check_offered(self, peer_serial: int, key: int) -> Device:
        """The device a peer may establish a pair onto: one of an LSS its [[peers]] entry
        offers (NotOffered otherwise, whether the device exists or not)."""
        if not any(p.serial == peer_serial and p.offers(key) for p in self.peers.values()):
            raise NotOffered(
                f"controller {peer_serial}: LSS {key >> 8:02X} CCA {key & 0xFF:02X} is not "
                f"offered to it on controller {self.name} ([[peers]] offer_lss)"
            )
        return self.device(key)

    def host_devices(self, host: HostGrant, keys: Iterable[int]) -> list[int]:
        """The keys a batch names, or every device the host may reach when it names none."""
        keys = list(keys)
        if keys:
            return keys
        return [key for key in sorted(self.devices) if host.allows(key)]

    # Host verbs...

    def identify(self, host: HostGrant, keys: Iterable[int]) -> list[DeviceIdentity]:
        self.counters["identifies"] += 1
        out = []
        for key in self.host_devices(host, keys):
            try:
                device = self.device_for_host(host, key)
            except RemcopyError as exc:
                out.append(DeviceIdentity(device=key, status=exc.code))
                continue
            volume, address = device.volume, device.address
            out.append(
                DeviceIdentity(
                    device=key,
                    ssid=address.ssid,
                    serial=address.serial,
                    capacity_bytes=volume.capacity_bytes,
                    track_size_bytes=volume.track_size_bytes,
                    state=device.pair.state,
                    role=device.pair.role,
                    volser=str(volume.volser),
                )
            )
        return out

    def query(self, host: HostGrant, keys: Iterable[int]) -> list[DeviceStatus]:
        self.counters["queries"] += 1
        out = []
        for key in self.host_devices(host, keys):
            try:
                device = self.device_for_host(host, key)
            except RemcopyError as exc:
                out.append(DeviceStatus(device=key, status=exc.code))
                continue
            out.append(self.device_status(device))
        return out

    @staticmethod
    def device_status(device: Device) -> DeviceStatus:
        """What the controller itself keeps about a device, as the query answers it (the
        replicator adds what it knows: lag, changed tracks, copy left)."""
        pair = device.pair
        return DeviceStatus(
            device=device.key,
            state=pair.state,
            role=pair.role,
            mode=pair.mode,
            suspend_at_ns=pair.suspend_at_ns,
            peer_serial=pair.peer_serial,
            peer_device=pair.peer_device,
            fence=pair.fence,
            consistency_group=pair.consistency_group,
            tracks=device.volume.tracks,
            changed_at_ns=pair.changed_at_ns,
            change_cause=pair.change_cause,
        )

    def read(self, host: HostGrant, key: int, offset: int, length: int) -> bytes:
        device = self.device_for_host(host, key)
        self.counters["reads"] += 1
        return device.volume.pread(offset, length)

    def check_writable(self, device: Device) -> None:
        pair = device.pair
        if pair.role is PairRole.SECONDARY and pair.state is not PairState.RECOVERED:
            raise WriteProtected(
                f"cannot write {device.address}: it is the secondary of a pair in "
                f"{pair.state.name}: host writes need RECOVERED"
            )

    def write(
        self, host: HostGrant, key: int, offset: int, data: bytes, *, timestamp_ns: int
    ) -> Device:
        """Write locally; returns the device so the caller can flush for FUA."""
        device = self.device_for_host(host, key)
        self.check_writable(device)
        device.volume.pwrite(offset, data)
        self.counters["writes"] += 1
        return device

    def flush_targets(self, host: HostGrant, keys: Iterable[int]) -> list[Volume]:
        return [self.device_for_host(host, key).volume for key in self.host_devices(host, keys)]

    @property
    def links(self) -> str:
        """How hosts and peers reach this controller: "tls" or "plain_tcp"."""
        return "plain_tcp" if self.config.tls_files() is None else "tls"

    def status(self, host: HostGrant) -> dict[str, Any]:
        """The status document as `host` may see it: only the devices of its grant (their
        count, states and list); the controller's name, serial, uptime and counters."""
        devices = [self.devices[key] for key in self.host_devices(host, ())]
        by_state: dict[str, int] = {}
        for device in devices:
            by_state[device.pair.state.name] = by_state.get(device.pair.state.name, 0) + 1
        testing = self.config.testing()
        return {
            # Present only when a test-only switch is on: `controller status` shows it loudly.
            **({"testing": testing} if testing else {}),
            "name": self.name,
            "serial": self.serial,
            "links": self.links,
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3),
            "volumes": len(devices),
            "states": by_state,
            "counters": {
                **self.counters,
                # Durable transactions the commits took (fewer: commits shared one).
                "state_transactions": self.writer.figures.transactions,
            },
            "devices": [
                {
                    "address": str(d.address),
                    "volser": str(d.volume.volser),
                    "capacity_bytes": d.volume.capacity_bytes,
                    "state": d.pair.state.name,
                    "role": d.pair.role.value,
                }
                for d in devices
            ],
        }


def _numbered(draft: Event, *, seq: int, serial: int, controller: str, now_ns: int) -> Event:
    """A draft event with its number, controller and time (a constructor call: a third of
    what dataclasses.replace costs, on a path that makes 1,250 at once)."""
    return Event(
        kind=draft.kind,
        seq=seq,
        serial=serial,
        controller=controller,
        time_ns=now_ns,
        text=draft.text[:EVENT_TEXT_MAX_CHARS],
        device=draft.device,
        old=draft.old,
        new=draft.new,
        cause=draft.cause,
        at_ns=draft.at_ns,
        group=draft.group,
        peer=draft.peer,
        detail=draft.detail,
    )


def _documents(pairs: Mapping[int, PairInfo]) -> dict[int, dict[str, Any] | None]:
    """The pair store's document of each pair (None: back to SIMPLEX with no role)."""
    return {
        key: info.to_json()
        if info.state is not PairState.SIMPLEX or info.role is not PairRole.NONE
        else None
        for key, info in pairs.items()
    }
