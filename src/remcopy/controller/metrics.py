# Prometheus metrics of one controller: `GET /metrics` on `metrics_listen` (docs/operations.md).
#
# Why: administrators watch a DR site with the monitoring they already run. Each controller
# exports its pairs (state, lag, changed tracks, copy progress, consistency time), its
# replication links (up, heartbeat round trip, updates and bytes sent and applied), its
# late writes, holds and freezes, and histograms of host I/O and state-commit latency.
#
# Rules this module keeps:
# - The endpoint is a small HTTP/1.1 server on the controller's own event loop, started and
#   stopped with the native server (controller/server.py); each scrape is a task of its
#   TaskGroup, inside the controller's. A scrape reads the live state on the loop, a slice of
#   SNAPSHOT_SLICE_DEVICES devices per loop step, into a Snapshot of plain values and frozen
#   query answers; prometheus-client's registry and text encoder then turn that copy into the
#   exposition in a worker thread (it costs ~50 µs a sample: 0.6 s for 1,250 pairs here, which
#   must not hold host I/O). No thread ever reads the loop's state, and no lock is needed.
# - Every pair value is what the controller's query answers for the device (the same
#   Controller.device_status and Replicator.query), so /metrics and `group pairs` agree.
# - HTTP: GET (or HEAD) /metrics answers 200; any other path 404, another method 405; a
#   request line that is not HTTP/1.x, a head over HEAD_SIZE_MAX_BYTES, or a client silent for
#   REQUEST_TIMEOUT_S is closed without an answer. Every answer closes the connection.
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from remcopy.controller.core import Controller
from remcopy.states import PairRole
from remcopy.wire.native import DeviceStatus

if TYPE_CHECKING:
    from remcopy.controller.peerlink import PeerLink

log = logging.getLogger("remcopy.controller")


class ReplicationStatus(Protocol):
    """What the metrics need of the replicator (replication.Replicator): per-device status,
    the links and the updates applied per peer. Declared here so that this endpoint does not
    import the replicator: the server that builds both hands it in."""

    links: dict[int, PeerLink]
    applied_updates: dict[int, int]
    applied_bytes: dict[int, int]

    def query(self, statuses: list[DeviceStatus]) -> list[DeviceStatus]: ...


HEAD_SIZE_MAX_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 10.0
METRICS_PATH: Final = b"/metrics"

# Devices read per loop step by a scrape: a slice costs about what a query of as many devices
# does (~1-2 ms here), then host I/O waiting meanwhile is served.
SNAPSHOT_SLICE_DEVICES: Final = 64
_PAIR_LABELS: Final = ("device", "volser", "role", "peer")
# Counters of Controller.counters exported as they are: metric name -> (counter, help).
_COUNTERS: Final = {
    "remcopy_late_writes": (
        "late_writes",
        "Host writes stamped before a sealed suspend time T that arrived after the seal "
        "(refused, retryable).",
    ),
    "remcopy_holds": (
        "holds",
        "Holds of host writes begun (a consistency-group device after a replication error).",
    ),
    "remcopy_held_writes": ("held_writes", "Host writes that waited on a hold."),
    "remcopy_link_errors": ("link_errors", "Replication link failures."),
    "remcopy_host_reads": ("reads", "Host reads served."),
    "remcopy_host_writes": ("writes", "Host writes served."),
    "remcopy_copied_tracks": ("tracks_copied", "Tracks sent by initial copies and resyncs."),
    "remcopy_state_commits": ("state_commits", "Durable pair-state commits."),
}
_FREEZES: Final = {"started": "freezes_started", "joined": "freezes_joined"}


def _peer_label(serial: int, device: int) -> str:
    return f"{serial}:{device >> 8:02X}:{device & 0xFF:02X}" if serial else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one scrape exports, copied off the controller's loop: plain values and
    frozen query answers, safe to encode in another thread."""

    name: str
    serial: int
    started_ns: int
    read_at_ns: int
    devices_by_state: dict[str, int]
    pairs: list[tuple[str, str, DeviceStatus]]
    """(hardware address, volser, the query answer) per paired device."""
    links: list[tuple[str, int, bool, int, int, int]]
    """(peer name, serial, up, heartbeat round trip ns, updates sent, bytes sent)."""
    applied: list[tuple[str, int, int, int]]
    """(peer name, serial, updates applied, bytes applied)."""
    counters: dict[str, int]
    io_latency: dict[str, tuple[list[tuple[str, int]], float]]
    commit_latency: tuple[list[tuple[str, int]], float]


class ControllerCollector:
    """Reads one controller's live state on its loop (`snapshot`), a slice of devices per
    loop step, so a scrape of thousands of pairs never holds host I/O for long."""

    def __init__(self, controller: Controller, replicator: ReplicationStatus) -> None:
        self.controller = controller
        self.replicator = replicator

    def __repr__(self) -> str:
        return f"<ControllerCollector {self.controller.name}>"

    async def snapshot(self) -> Snapshot:
        c, rep = self.controller, self.replicator
        pairs: list[tuple[str, str, DeviceStatus]] = []
        paired = [d for _, d in sorted(c.devices.items()) if d.pair.role is not PairRole.NONE]
        for at in range(0, len(paired), SNAPSHOT_SLICE_DEVICES):
            if at:
                await asyncio.sleep(0)  # let host I/O in between slices
            chunk = paired[at : at + SNAPSHOT_SLICE_DEVICES]
            statuses = rep.query([c.device_status(d) for d in chunk])
            pairs.extend(
                (str(d.address), str(d.volume.volser), s)
                for d, s in zip(chunk, statuses, strict=True)
            )
        by_state: dict[str, int] = {}
        for device in c.devices.values():
            by_state[device.pair.state.name] = by_state.get(device.pair.state.name, 0) + 1
        names = {p.serial: p.name for p in c.peers.values()}
        return Snapshot(
            name=c.name,
            serial=c.serial,
            started_ns=c.started_ns,
            read_at_ns=time.time_ns(),
            devices_by_state=by_state,
            pairs=pairs,
            links=[
                (
                    link.peer.name,
                    serial,
                    link.channel.connected and link.broken is None,
                    link.heartbeat_rtt_ns,
                    link.updates_sent,
                    link.bytes_sent,
                )
                for serial, link in sorted(rep.links.items())
            ],
            applied=[
                (names.get(serial, ""), serial, n, rep.applied_bytes.get(serial, 0))
                for serial, n in sorted(rep.applied_updates.items())
            ],
            counters=dict(c.counters),
            io_latency={op: (h.cumulative(), h.sum_s) for op, h in c.io_latency.items()},
            commit_latency=(c.commit_latency.cumulative(), c.commit_latency.sum_s),
        )


def families(snap: Snapshot) -> list[Metric]:
    """The metric families of one snapshot (pure: runs in a worker thread)."""
    return [*_controller(snap), *_pairs(snap), *_links(snap), *_counters(snap)]


def encode(snap: Snapshot) -> bytes:
    """The text exposition of one snapshot (prometheus-client's encoder)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families(snap)))
    return generate_latest(registry)


class _Fixed:
    """A collector that returns families already built."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _controller(snap: Snapshot) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "remcopy_controller_info", "This controller (value 1).", labels=["name", "serial"]
    )
    info.add_metric([snap.name, str(snap.serial)], 1)
    yield info
    yield GaugeMetricFamily(
        "remcopy_controller_start_time_seconds",
        "When this controller process started (Unix time).",
        value=snap.started_ns / 1e9,
    )
    devices = GaugeMetricFamily(
        "remcopy_devices", "Devices of this controller by pair state.", labels=["state"]
    )
    for state, n in sorted(snap.devices_by_state.items()):
        devices.add_metric([state], n)
    yield devices


_PAIR_GAUGES: Final = (
    ("remcopy_pair_lag_bytes", "Bytes written here not yet confirmed by the peer."),
    (
        "remcopy_pair_lag_seconds",
        "Age of the oldest update not yet confirmed by the peer (0: none waiting).",
    ),
    (
        "remcopy_pair_journal_bytes",
        "Bytes of the device's updates in this controller's journal: an async primary's not "
        "yet confirmed, or held at a secondary of an async consistency group until C passes.",
    ),
    ("remcopy_pair_changed_tracks", "Tracks set in the change map."),
    ("remcopy_pair_copy_remaining_tracks", "Tracks the running copy has to send."),
    (
        "remcopy_pair_copy_progress_ratio",
        "Share of tracks the same on both ends as far as this end knows (0..1).",
    ),
    (
        "remcopy_pair_consistency_time_seconds",
        "Time the secondary is consistent as of, where this answer fixes it (suspended: T; "
        "sync duplex: now); absent for async pairs outside SUSPENDED.",
    ),
)


def _pairs(snap: Snapshot) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "remcopy_pair_state",
        "A paired device's state: 1 on the series of its current state.",
        labels=[*_PAIR_LABELS, "state", "mode"],
    )
    gauges = {
        name: GaugeMetricFamily(name, text, labels=list(_PAIR_LABELS))
        for name, text in _PAIR_GAUGES
    }
    changed = GaugeMetricFamily(
        "remcopy_pair_state_change_time_seconds",
        "When the pair's state last changed (Unix time), with its cause.",
        labels=[*_PAIR_LABELS, "cause"],
    )
    for address, volser, s in snap.pairs:
        labels = [address, volser, s.role.value, _peer_label(s.peer_serial, s.peer_device)]
        state.add_metric([*labels, s.state.name, s.mode.value if s.mode else ""], 1)
        gauges["remcopy_pair_lag_bytes"].add_metric(labels, s.lag_bytes)
        gauges["remcopy_pair_lag_seconds"].add_metric(labels, s.lag_ns / 1e9)
        gauges["remcopy_pair_journal_bytes"].add_metric(labels, s.journal_bytes)
        gauges["remcopy_pair_changed_tracks"].add_metric(labels, s.dirty_tracks)
        gauges["remcopy_pair_copy_remaining_tracks"].add_metric(labels, s.copy_left_tracks)
        ratio = s.copy_ratio()
        if ratio is not None:
            gauges["remcopy_pair_copy_progress_ratio"].add_metric(labels, ratio)
        consistent = s.consistent_as_of(snap.read_at_ns)
        if consistent is not None:
            gauges["remcopy_pair_consistency_time_seconds"].add_metric(labels, consistent / 1e9)
        if s.changed_at_ns:
            changed.add_metric([*labels, s.change_cause], s.changed_at_ns / 1e9)
    yield state
    yield from gauges.values()
    yield changed


def _links(snap: Snapshot) -> Iterable[Metric]:
    labels = ["peer", "peer_serial"]
    up = GaugeMetricFamily(
        "remcopy_peer_link_up",
        "Replication link to a peer (secondary) controller: 1 connected and healthy.",
        labels=labels,
    )
    rtt = GaugeMetricFamily(
        "remcopy_peer_heartbeat_round_trip_seconds",
        "Round trip of the last answered heartbeat on the link (0: none yet).",
        labels=labels,
    )
    sent = CounterMetricFamily(
        "remcopy_peer_updates_sent", "Updates sent on the link.", labels=labels
    )
    sent_bytes = CounterMetricFamily(
        "remcopy_peer_sent_bytes", "Update payload bytes sent on the link.", labels=labels
    )
    for name, serial, is_up, rtt_ns, updates, sent_n in snap.links:
        values = [name, str(serial)]
        up.add_metric(values, int(is_up))
        rtt.add_metric(values, rtt_ns / 1e9)
        sent.add_metric(values, updates)
        sent_bytes.add_metric(values, sent_n)
    applied = CounterMetricFamily(
        "remcopy_peer_updates_applied",
        "Updates from a peer (primary) controller applied here.",
        labels=labels,
    )
    applied_bytes = CounterMetricFamily(
        "remcopy_peer_applied_bytes",
        "Update payload bytes from a peer (primary) controller applied here.",
        labels=labels,
    )
    for name, serial, updates, applied_n in snap.applied:
        applied.add_metric([name, str(serial)], updates)
        applied_bytes.add_metric([name, str(serial)], applied_n)
    yield from (up, rtt, sent, sent_bytes, applied, applied_bytes)


def _counters(snap: Snapshot) -> Iterable[Metric]:
    for name, (counter, text) in _COUNTERS.items():
        yield CounterMetricFamily(name, text, value=snap.counters.get(counter, 0))
    freezes = CounterMetricFamily(
        "remcopy_freezes",
        "Consistency-group freezes this controller started or joined.",
        labels=["kind"],
    )
    for kind, counter in _FREEZES.items():
        freezes.add_metric([kind], snap.counters.get(counter, 0))
    yield freezes
    io = HistogramMetricFamily(
        "remcopy_host_io_latency_seconds",
        "Host reads and writes on the native protocol: request read to answer queued.",
        labels=["op"],
    )
    for op, (buckets, total) in snap.io_latency.items():
        io.add_metric([op], [(b, float(n)) for b, n in buckets], total)
    yield io
    buckets, total = snap.commit_latency
    yield HistogramMetricFamily(
        "remcopy_state_commit_latency_seconds",
        "Durable pair-state commits (the pair store's transaction).",
        buckets=[(b, float(n)) for b, n in buckets],
        sum_value=total,
    )


class MetricsEndpoint:
    """`GET /metrics` over HTTP/1.1 on the controller's loop (see the rules at the top)."""

    def __init__(
        self, controller: Controller, replicator: ReplicationStatus, listen: tuple[str, int]
    ) -> None:
        self.listen = listen
        self.collector = ControllerCollector(controller, replicator)
        self.scrapes = 0
        self._server: asyncio.Server | None = None
        self.connections: set[_HttpConnection] = set()
        """Open client connections (each adds and removes itself), aborted at stop."""
        self._stopping = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._scraping = asyncio.Lock()  # one scrape at a time; others wait their turn

    def __repr__(self) -> str:
        return f"<MetricsEndpoint {self.listen} scrapes={self.scrapes}>"

    async def start(self) -> tuple[str, int]:
        """Listen (OSError if it cannot); returns the address listened on."""
        host, port = self.listen
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpConnection(self), host, port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def serve(self) -> None:
        """Answer scrapes until stop(); then close the listener and every connection. Each
        scrape is a task of this TaskGroup (inside the controller's)."""
        assert self._server is not None, "start() first"
        async with self._server, asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self._stopping.wait()
            self._tasks = None
            for connection in list(self.connections):
                connection.abort()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        """Stop listening at once (the controller did not start: serve() never ran)."""
        if self._server is not None:
            self._server.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` in the endpoint's TaskGroup; False (work closed) when not serving."""
        if self._tasks is None:
            work.close()
            return False
        self._tasks.create_task(work, name="metrics scrape")
        return True

    async def render(self) -> bytes:
        """One scrape: the snapshot on this loop, the encoding in a worker thread (it reads
        only the snapshot's copied values; prometheus-client's encoder costs ~50 µs a sample,
        which would otherwise hold host I/O for as long)."""
        async with self._scraping:
            snap = await self.collector.snapshot()
            body = await asyncio.to_thread(encode, snap)
        self.scrapes += 1
        return body


_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


class _HttpConnection(asyncio.Protocol):
    """One client connection: read one request head, answer it, close."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.answering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.endpoint.connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.answering or self.transport is None or self.transport.is_closing():
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > HEAD_SIZE_MAX_BYTES:
                self.abort()
            return
        if end > HEAD_SIZE_MAX_BYTES:
            self.abort()
            return
        self.answering = True
        if self.timer is not None:
            self.timer.cancel()
        self._answer(bytes(self.head[:end]).split(b"\r\n", 1)[0])

    def _answer(self, request_line: bytes) -> None:
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.abort()  # not an HTTP/1.x request: closed without an answer
            return
        method, target, _ = parts
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            self._send(405, b"", head_only)
        elif target.split(b"?", 1)[0] != METRICS_PATH:
            self._send(404, b"", head_only)
        elif not self.endpoint.spawn(self._scrape(head_only)):
            self.abort()  # the controller is stopping

    async def _scrape(self, head_only: bool) -> None:
        body = await self.endpoint.render()
        self._send(200, body, head_only)

    def _send(self, status: int, body: bytes, head_only: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client left (or the controller is stopping)
        content_type = CONTENT_TYPE_LATEST
        if status != 200:
            content_type = "text/plain; charset=utf-8"
            body = f"{status} {_REASONS[status]}: remcopy serves GET /metrics only\n".encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head if head_only else head + body)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


__all__ = ["ControllerCollector", "MetricsEndpoint", "Snapshot", "encode", "families"]
