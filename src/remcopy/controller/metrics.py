# Prometheus metrics of one controller: `GET /metrics` on `metrics_listen` (docs/operations.md).
#
# Why: administrators watch a DR site with the monitoring they already run. Each controller
# exports its pairs (state, lag, changed tracks, copy progress, consistency time), its
# replication links (up, heartbeat round trip, updates and bytes sent and applied), its
# late writes, holds and freezes, and histograms of host I/O and state-commit latency.
#
# Rules this module keeps:
# - The endpoint is a small HTTP/1.1 server on the controller's own event loop, started and
#   stopped with the native server (controller/server.py, inside its TaskGroup). A scrape is
#   answered from a protocol callback on the loop: the collector reads the controller's live
#   state where it lives, with no thread and no lock (prometheus-client's registry, custom
#   collector and text encoder; none of its thread-based servers).
# - Every pair value is what the controller's query answers for the device (the same
#   Controller.device_status and Replicator.query), so /metrics and `group pairs` agree.
# - HTTP: GET (or HEAD) /metrics answers 200; any other path 404, another method 405; a
#   request line that is not HTTP/1.x, a head over HEAD_SIZE_MAX_BYTES, or a client silent for
#   REQUEST_TIMEOUT_S is closed without an answer. Every answer closes the connection.
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Final, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from remcopy.controller.core import Controller
from remcopy.controller.latency import Latency
from remcopy.controller.replication import Replicator
from remcopy.states import PairRole

log = logging.getLogger("remcopy.controller")

HEAD_SIZE_MAX_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 10.0
METRICS_PATH: Final = b"/metrics"

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


def _histogram(name: str, text: str, label: str, values: dict[str, Latency]) -> Metric:
    family = HistogramMetricFamily(name, text, labels=[label] if label else None)
    for value, latency in values.items():
        family.add_metric(
            [value] if label else [],
            [(bound, float(n)) for bound, n in latency.cumulative()],
            latency.sum_s,
        )
    return family


class ControllerCollector:
    """A prometheus-client collector reading one controller's live state (on its loop)."""

    def __init__(self, controller: Controller, replicator: Replicator) -> None:
        self.controller = controller
        self.replicator = replicator

    def __repr__(self) -> str:
        return f"<ControllerCollector {self.controller.name}>"

    def collect(self) -> Iterable[Metric]:
        yield from self._controller()
        yield from self._pairs()
        yield from self._links()
        yield from self._counters()

    def _controller(self) -> Iterable[Metric]:
        c = self.controller
        info = GaugeMetricFamily(
            "remcopy_controller_info", "This controller (value 1).", labels=["name", "serial"]
        )
        info.add_metric([c.name, str(c.serial)], 1)
        yield info
        yield GaugeMetricFamily(
            "remcopy_controller_start_time_seconds",
            "When this controller process started (Unix time).",
            value=c.started_ns / 1e9,
        )
        by_state: dict[str, int] = {}
        for device in c.devices.values():
            by_state[device.pair.state.name] = by_state.get(device.pair.state.name, 0) + 1
        devices = GaugeMetricFamily(
            "remcopy_devices", "Devices of this controller by pair state.", labels=["state"]
        )
        for state, n in sorted(by_state.items()):
            devices.add_metric([state], n)
        yield devices

    def _pairs(self) -> Iterable[Metric]:
        c = self.controller
        now_ns = time.time_ns()
        paired = [d for _, d in sorted(c.devices.items()) if d.pair.role is not PairRole.NONE]
        statuses = self.replicator.query([c.device_status(d) for d in paired])
        state = GaugeMetricFamily(
            "remcopy_pair_state",
            "A paired device's state: 1 on the series of its current state.",
            labels=[*_PAIR_LABELS, "state", "mode"],
        )
        families = {
            name: GaugeMetricFamily(name, text, labels=list(_PAIR_LABELS))
            for name, text in (
                ("remcopy_pair_lag_bytes", "Bytes written here not yet confirmed by the peer."),
                (
                    "remcopy_pair_lag_seconds",
                    "Age of the oldest update not yet confirmed by the peer (0: none waiting).",
                ),
                ("remcopy_pair_changed_tracks", "Tracks set in the change map."),
                ("remcopy_pair_copy_remaining_tracks", "Tracks the running copy has to send."),
                (
                    "remcopy_pair_copy_progress_ratio",
                    "Share of tracks the same on both ends as far as this end knows (0..1).",
                ),
                (
                    "remcopy_pair_consistency_time_seconds",
                    "Time the secondary is consistent as of, where this answer fixes it "
                    "(suspended: T; sync duplex: now); absent for async pairs outside "
                    "SUSPENDED.",
                ),
            )
        }
        changed = GaugeMetricFamily(
            "remcopy_pair_state_change_time_seconds",
            "When the pair's state last changed (Unix time), with its cause.",
            labels=[*_PAIR_LABELS, "cause"],
        )
        for device, s in zip(paired, statuses, strict=True):
            labels = [
                str(device.address),
                str(device.volume.volser),
                s.role.value,
                _peer_label(s.peer_serial, s.peer_device),
            ]
            state.add_metric([*labels, s.state.name, s.mode.value if s.mode else ""], 1)
            families["remcopy_pair_lag_bytes"].add_metric(labels, s.lag_bytes)
            families["remcopy_pair_lag_seconds"].add_metric(labels, s.lag_ns / 1e9)
            families["remcopy_pair_changed_tracks"].add_metric(labels, s.dirty_tracks)
            families["remcopy_pair_copy_remaining_tracks"].add_metric(labels, s.copy_left_tracks)
            ratio = s.copy_ratio()
            if ratio is not None:
                families["remcopy_pair_copy_progress_ratio"].add_metric(labels, ratio)
            consistent = s.consistent_as_of(now_ns)
            if consistent is not None:
                families["remcopy_pair_consistency_time_seconds"].add_metric(
                    labels, consistent / 1e9
                )
            if s.changed_at_ns:
                changed.add_metric([*labels, s.change_cause], s.changed_at_ns / 1e9)
        yield state
        yield from families.values()
        yield changed

    def _links(self) -> Iterable[Metric]:
        rep = self.replicator
        names = {p.serial: p.name for p in self.controller.peers.values()}
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
        for serial, link in sorted(rep.links.items()):
            values = [link.peer.name, str(serial)]
            up.add_metric(values, int(link.channel.connected and link.broken is None))
            rtt.add_metric(values, link.heartbeat_rtt_ns / 1e9)
            sent.add_metric(values, link.updates_sent)
            sent_bytes.add_metric(values, link.bytes_sent)
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
        for serial, n in sorted(rep.applied_updates.items()):
            values = [names.get(serial, ""), str(serial)]
            applied.add_metric(values, n)
            applied_bytes.add_metric(values, rep.applied_bytes.get(serial, 0))
        yield from (up, rtt, sent, sent_bytes, applied, applied_bytes)

    def _counters(self) -> Iterable[Metric]:
        c = self.controller
        for name, (counter, text) in _COUNTERS.items():
            yield CounterMetricFamily(name, text, value=c.counters.get(counter, 0))
        freezes = CounterMetricFamily(
            "remcopy_freezes",
            "Consistency-group freezes this controller started or joined.",
            labels=["kind"],
        )
        for kind, counter in _FREEZES.items():
            freezes.add_metric([kind], c.counters.get(counter, 0))
        yield freezes
        yield _histogram(
            "remcopy_host_io_latency_seconds",
            "Host reads and writes on the native protocol: request read to answer queued.",
            "op",
            c.io_latency,
        )
        yield _histogram(
            "remcopy_state_commit_latency_seconds",
            "Durable pair-state commits (the pair store's transaction).",
            "",
            {"": c.commit_latency},
        )


class MetricsEndpoint:
    """`GET /metrics` over HTTP/1.1 on the controller's loop (see the rules at the top)."""

    def __init__(
        self, controller: Controller, replicator: Replicator, listen: tuple[str, int]
    ) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ControllerCollector(controller, replicator))
        self.scrapes = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_HttpConnection] = set()
        self._stopping = asyncio.Event()

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
        """Answer scrapes until stop(); then close the listener and every connection."""
        assert self._server is not None, "start() first"
        async with self._server:
            await self._stopping.wait()
            for connection in list(self._connections):
                connection.abort()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        """Stop listening at once (the controller did not start: serve() never ran)."""
        if self._server is not None:
            self._server.close()

    def render(self) -> bytes:
        self.scrapes += 1
        return generate_latest(self.registry)


_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


class _HttpConnection(asyncio.Protocol):
    """One client connection: read one request head, answer it, close."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.endpoint._connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint._connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
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
        self._answer(bytes(self.head[:end]).split(b"\r\n", 1)[0])

    def _answer(self, request_line: bytes) -> None:
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.abort()  # not an HTTP/1.x request: closed without an answer
            return
        method, target, _ = parts
        body = b""
        content_type = "text/plain; charset=utf-8"
        if method not in (b"GET", b"HEAD"):
            status = 405
        elif target.split(b"?", 1)[0] != METRICS_PATH:
            status = 404
        else:
            status, body, content_type = 200, self.endpoint.render(), CONTENT_TYPE_LATEST
        if status != 200:
            body = f"{status} {_REASONS[status]}: remcopy serves GET /metrics only\n".encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        assert self.transport is not None
        self.transport.write(head if method == b"HEAD" else head + body)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


__all__ = ["ControllerCollector", "MetricsEndpoint"]
