# The native protocol between hosts and controllers, and between controllers: a sans-I/O codec.
#
# Why it exists: every request a host or a peer controller makes travels as a frame defined
# here. Keeping the codec free of sockets and asyncio (h11's rule) means it is tested with
# plain bytes, fuzzed with Hypothesis, and reused by the controller, the host channel and the
# replication link alike.
#
# Theory of operation
# - A frame is `length u32 | kind u8 | flags u8 | reserved u16 | request_id u64 | body`,
#   network order; `length` counts everything after itself. `request_id` lets many requests be
#   in flight on one connection and their answers come back in any order.
# - A connection starts with the handshake of `wire.auth`: HELLO, CHALLENGE, PROOF, WELCOME.
#   The HELLO body starts with the protocol version, a layout every future version keeps, so a
#   peer of another version is told both versions instead of receiving garbage.
# - `Connection` enforces the phases: before WELCOME nothing but handshake frames is accepted,
#   so no request is ever acted on for an unauthenticated peer.
# - Each side accepts only the kinds the other side may send (a host never receives a READ
#   request, a controller never receives a READ reply).
# - Receiving copies as little as it can. A shell either reads straight into the codec's buffer
#   (`get_buffer` / `buffer_updated`, the shape of asyncio.BufferedProtocol) or hands it bytes
#   (`receive_data`). Frames are decoded in place from a memoryview of that buffer, which is
#   consumed by advancing an offset; unread bytes move to its front only when a read needs the
#   room. Each payload (WriteRequest.data, ReadReply.data, Update.data, PairOpReply.data) is
#   copied exactly once, out of the buffer, into a bytes object the message owns: messages
#   never hold a view of the buffer, so they stay valid however long they are kept (an async
#   journal or a replication queue keeps them well past the next read).
# - Sending copies nothing big. `send_parts` returns the frame as a list of bytes, the header
#   and fixed fields joined and each payload as its own part, for `transport.writelines`;
#   `send` and `encode` join them for callers that want one bytes object.
#
# Rules this module keeps:
# - Never act on a partial frame: a frame is decoded only when all its bytes are here.
# - Every limit is a named constant; going over it raises RemoteProtocolError.
# - Hostile bytes produce RemoteProtocolError (or VersionMismatch) and nothing else: every
#   decode error (struct, unicode, enum, index) is caught at one place, `_decode`.
# - `LocalProtocolError` means we tried to send something out of phase: our bug.
from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from remcopy.errors import (
    LocalProtocolError,
    RemcopyError,
    RemoteProtocolError,
    VersionMismatch,
)
from remcopy.events import KIND_CODES, Event, EventKind, from_fields
from remcopy.states import CopyMode, FencePolicy, PairRole, PairState
from remcopy.wire.auth import NONCE_SIZE_BYTES, PROOF_SIZE_BYTES

PROTOCOL_VERSION: Final = 2

# The largest single read or write: 16 MiB is 256 tracks of 64 KiB, far above what a host or a
# resync batch needs per request, and small enough that a connection's buffer stays bounded.
IO_SIZE_MAX_BYTES: Final = 16 * 1024 * 1024
# A frame holds at most one I/O payload plus its fixed fields, or a device batch: 65,536
# devices (every LSS x CCA of a controller) with 64-byte records is 4 MiB, well below this.
FRAME_SIZE_MAX_BYTES: Final = IO_SIZE_MAX_BYTES + 4096
# Before authentication only handshake frames (and an error frame) travel: a frame that claims
# more is refused at its header, so a peer that has not proved it knows the secret can never
# make the other side reserve a big receive buffer.
HANDSHAKE_FRAME_MAX_BYTES: Final = 64 * 1024 + 4096
# Names, messages and event lines are short; status documents are small JSON objects.
NAME_SIZE_MAX_BYTES: Final = 255
TEXT_SIZE_MAX_BYTES: Final = 64 * 1024
DEVICES_MAX: Final = 65536
# An event's fields (its line for people, an error message, a few numbers) fit in 64 KiB; the
# controller cuts an event's text to EVENT_TEXT_MAX_CHARS so every event it makes fits.
EVENT_SIZE_MAX_BYTES: Final = 64 * 1024
EVENT_TEXT_MAX_CHARS: Final = 8 * 1024
# Status and operation documents (JSON): a controller's status lists every device, about
# 150 bytes each, so 65,536 devices fit in 10 MiB, under the frame limit.
DOCUMENT_SIZE_MAX_BYTES: Final = 12 * 1024 * 1024
# The receive buffer starts at RECEIVE_BUFFER_START_BYTES (most connections carry small
# requests) and doubles while reads fill it, up to RECEIVE_BUFFER_BYTES: 1 MiB is sixteen 64 KiB
# writes per read, past which the per-read cost no longer shows. A frame larger than the buffer
# grows it to fit that frame as its bytes arrive (never ahead of them by more than what came),
# and before authentication no frame may claim more than HANDSHAKE_FRAME_MAX_BYTES. A shell
# that stops reading once RECEIVE_BUFFER_BYTES are buffered therefore holds at most that plus
# one frame per connection, and at most twice what a peer actually sent.
RECEIVE_BUFFER_START_BYTES: Final = 64 * 1024
RECEIVE_BUFFER_BYTES: Final = 1024 * 1024
# No read is offered less room than this: a 64 KiB write and its header arrive in two reads.
RECEIVE_ROOM_MIN_BYTES: Final = 64 * 1024
# In send_parts, a payload this big or bigger is its own part (writelines sends it without a
# copy); smaller ones are joined with the fields around them (fewer, larger iovecs).
_GATHER_MIN_BYTES: Final = 2048

_LENGTH = struct.Struct("!I")
_HEADER = struct.Struct("!IBBHQ")  # length, kind, flags, reserved, request_id
_HEADER_AFTER_LENGTH_BYTES: Final = _HEADER.size - _LENGTH.size
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HELLO = struct.Struct(f"!HB{NONCE_SIZE_BYTES}s")  # version, role, nonce; then name
_CHALLENGE = struct.Struct(f"!H{NONCE_SIZE_BYTES}s")  # version, nonce; then name
_WELCOME = struct.Struct(f"!I{PROOF_SIZE_BYTES}s")  # serial, server proof; then name
_ERROR = struct.Struct("!H")  # code; then message
_READ = struct.Struct("!HQI")  # device, offset, length
_WRITE = struct.Struct("!HQQ")  # device, offset, timestamp_ns; then data
# device, status, ssid, serial, capacity_bytes, track_size_bytes, state, role, volser
_IDENTITY = struct.Struct("!HHHIQIBB6s")
# device, status, state, role, mode, flags, suspend_at_ns, dirty_tracks, lag_bytes, lag_ns,
# peer serial, peer device, copy_left_tracks (the record as earlier versions sent it, 54
# bytes), then fence, consistency group, the volume's tracks, when the state last changed, and
# the async consistency time C, the device's journal bytes, and the length of the cause that
# follows (UTF-8, at most _CAUSE_SIZE_MAX_BYTES).
_DEVICE_STATUS = struct.Struct("!HHBBBBQQQQIHQBBQQQQB")
_CAUSE_SIZE_MAX_BYTES: Final = 255

_PAIR_ITEM = struct.Struct("!HIHBBBQ")  # device, peer serial, peer device, mode, fence, cg, size
_PAIR_RESULT = struct.Struct("!HHBBQQ")  # device, code, state, role, at_ns, tracks
_PAIR_OP = struct.Struct("!BQI")  # op, at_ns, item count
_COUNTS = struct.Struct("!II")  # record count, JSON length
_UPDATE = struct.Struct("!HBQQI")  # device, flags, timestamp_ns, offset, length
_SUBSCRIBE = struct.Struct("!BQ")  # replay, after_seq
_EVENT = struct.Struct("!QQIB")  # seq, time_ns, serial, kind; then the other fields as JSON
_U32 = struct.Struct("!I")

_FLAG_FUA: Final = 0x01

# Wire codes of the enums. Their order is part of the protocol: append only.
_STATES: Final = tuple(
    PairState[n]
    for n in ("SIMPLEX", "PENDING", "DUPLEX", "SUSPENDED", "SUSPENDED_ERROR", "RECOVERED")
)
_ROLES: Final = tuple(PairRole[n] for n in ("NONE", "PRIMARY", "SECONDARY"))
_MODES: Final = (None, *(CopyMode[n] for n in ("SYNC", "ASYNC", "SEMISYNC")))
_FENCES: Final = (FencePolicy.NEVER, FencePolicy.DATA)


class PeerRole(enum.IntEnum):
    """Who is connecting: a host doing I/O and management, or a peer controller."""

    HOST = 1
    PEER = 2


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Phase(enum.Enum):
    HELLO = "hello"  # server waits for HELLO / client has not sent it
    PROOF = "proof"  # challenge sent or received, proof outstanding
    READY = "ready"  # authenticated: requests flow
    CLOSED = "closed"


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")


# Messages. Each is a frozen value; `KIND` is its frame kind.


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    KIND: ClassVar[int] = 0
    request_id: int = 0
    """Matches an answer to its request; 0 during the handshake."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    KIND: ClassVar[int] = 1
    version: int = PROTOCOL_VERSION
    """The protocol version the client speaks."""
    role: PeerRole = PeerRole.HOST
    """Whether the client is a host or a peer controller."""
    name: str = ""
    """The client's name, the key of its secret in the server's config."""
    nonce: bytes = b""
    """The client's fresh random challenge for the server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge(Message):
    KIND: ClassVar[int] = 2
    version: int = PROTOCOL_VERSION
    name: str = ""
    """The server's name (for a controller, its configured name)."""
    nonce: bytes = b""
    """The server's fresh random challenge for the client (no proof: the client proves first)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Proof(Message):
    KIND: ClassVar[int] = 3
    proof: bytes = b""
    """The client's proof that it knows the secret (wire.auth.client_proof)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    KIND: ClassVar[int] = 4
    serial: int = 0
    """The controller's serial number."""
    name: str = ""
    proof: bytes = bytes(PROOF_SIZE_BYTES)
    """The server's proof that it knows the secret (wire.auth.server_proof), sent only after
    the client's proof was verified."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply(Message):
    KIND: ClassVar[int] = 5
    code: int = 1
    """A `remcopy.errors` code; `errors.error_from_wire` rebuilds the class."""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyRequest(Message):
    KIND: ClassVar[int] = 10
    devices: tuple[int, ...] = ()
    """Device keys (LSS << 8 | CCA); empty means every device the host may reach."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceIdentity:
    device: int
    status: int = 0
    """0 when identified; otherwise the error code (unknown device, not allowed)."""
    ssid: int = 0
    serial: int = 0
    capacity_bytes: int = 0
    track_size_bytes: int = 0
    state: PairState = PairState.SIMPLEX
    role: PairRole = PairRole.NONE
    volser: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyReply(Message):
    KIND: ClassVar[int] = 11
    identities: tuple[DeviceIdentity, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest(Message):
    KIND: ClassVar[int] = 12
    device: int = 0
    offset: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadReply(Message):
    KIND: ClassVar[int] = 13
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRequest(Message):
    KIND: ClassVar[int] = 14
    device: int = 0
    offset: int = 0
    timestamp_ns: int = 0
    """The host's issue time (time.time_ns()); orders writes against a suspend time."""
    fua: bool = False
    """Force unit access: durable (fdatasync) before the acknowledgement."""
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteReply(Message):
    KIND: ClassVar[int] = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushRequest(Message):
    KIND: ClassVar[int] = 16
    devices: tuple[int, ...] = ()
    """Devices to make durable; empty means all the host may reach."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushReply(Message):
    KIND: ClassVar[int] = 17


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRequest(Message):
    KIND: ClassVar[int] = 18
    devices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStatus:
    device: int
    status: int = 0
    state: PairState = PairState.SIMPLEX
    role: PairRole = PairRole.NONE
    mode: CopyMode | None = None
    flags: int = 0
    suspend_at_ns: int = 0
    """The suspend time T the device is armed for or suspended at; 0 when none."""
    dirty_tracks: int = 0
    """Tracks set in the change map."""
    lag_bytes: int = 0
    lag_ns: int = 0
    peer_serial: int = 0
    peer_device: int = 0
    copy_left_tracks: int = 0
    """Tracks the copy running on this device still has to send: the initial copy or resync
    of a PENDING primary, or a shadow copy of a secondary onto its tertiary; 0 when none runs.
    A copy's progress is its total (the `tracks` its operation answered) minus this."""
    fence: FencePolicy = FencePolicy.NEVER
    consistency_group: bool = False
    tracks: int = 0
    """The volume's data tracks (its capacity in tracks)."""
    changed_at_ns: int = 0
    """When the pair's state last changed (T for a suspend or freeze); 0 when not known."""
    change_cause: str = ""
    """What caused that change (suspend, replication-error, copy-done, ...); "" when not
    known."""
    consistency_time_ns: int = 0
    """Async consistency group: the consistency time C the secondary site is a cut at (every
    update stamped < C applied at every secondary of the group, none later); 0 when none."""
    journal_bytes: int = 0
    """Bytes of this device's updates in this controller's journal: at an async primary, those
    written here and not yet confirmed by the secondary; at a secondary of an async
    consistency group, those arrived and held (durable) until C passes their stamp; else 0."""

    def consistent_as_of(self, read_at_ns: int) -> int | None:
        """The time this end's pair is known consistent as of, from this answer read at
        `read_at_ns`: a SUSPENDED pair at its suspend time T; a sync pair in DUPLEX at the
        reading (the secondary holds every acknowledged write) and in SUSPENDED_ERROR at the
        error (or the freeze's T); an async secondary of a consistency group at its consistency
        time C. None otherwise: async pairs without C, PENDING, SIMPLEX, RECOVERED."""
        if self.state is PairState.SUSPENDED and self.suspend_at_ns:
            return self.suspend_at_ns
        if self.mode is CopyMode.ASYNC and self.consistency_time_ns:
            return self.consistency_time_ns
        if self.mode is CopyMode.SYNC and self.state is PairState.DUPLEX:
            return read_at_ns
        if self.mode is CopyMode.SYNC and self.state is PairState.SUSPENDED_ERROR:
            return self.suspend_at_ns or self.changed_at_ns or None
        return None

    def copy_ratio(self) -> float | None:
        """Share (0..1) of the volume's tracks the same on both ends as far as this end knows:
        while PENDING, the tracks copied; otherwise those not marked in the change map (1 in
        DUPLEX once every update is confirmed). None for SIMPLEX, or without the volume's
        size."""
        if self.state is PairState.SIMPLEX or not self.tracks:
            return None
        left = self.copy_left_tracks if self.state is PairState.PENDING else self.dirty_tracks
        return max(0, self.tracks - left) / self.tracks


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryReply(Message):
    KIND: ClassVar[int] = 19
    statuses: tuple[DeviceStatus, ...] = ()


# Kinds 20 and 21 carried free-text event lines (SUBSCRIBE, EVENT); they are retired, never
# reused: a peer that sends one is told the kind is unknown.


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest(Message):
    KIND: ClassVar[int] = 22


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReply(Message):
    KIND: ClassVar[int] = 23
    document: dict[str, Any] = field(default_factory=dict)
    """The controller's status as a JSON object (serial, volumes, counters)."""


class PairOp(enum.IntEnum):
    """What a PairOpRequest asks for. Host operations, then controller-to-controller ones."""

    ESTABLISH = 1
    SUSPEND = 2
    RESUME = 3
    RECOVER = 4
    FAILBACK = 5
    TERMINATE = 6
    SHADOW = 7
    # Sent by a primary controller to its secondary's controller (peer role only).
    PEER_ESTABLISH = 20
    """Become the secondary of these pairs (checks size and that the device is free)."""
    PEER_STATE = 21
    """Follow the primary's state change; options["action"] names the PairAction."""
    PEER_CHANGEMAP = 22
    """Answer with the device's change-map bits (for failback)."""
    PEER_FAILBACK = 23
    """The old primary becomes the secondary of the reversed pair."""
    PEER_FREEZE = 24
    """Sent by a primary to its sibling primaries of a consistency group: arm the group's
    devices at at_ns (or an earlier T already armed); options["group"] names the group; the
    reply's document says the T kept (controller/freeze.py)."""
    PEER_GROUP_QUERY = 25
    """Sent by a primary of a consistency group that starts again, to its siblings: answer
    with the state and T of each of the group's devices here (did the group freeze while
    the asker was down?)."""
    GROUP_CUT = 26
    """Host -> a secondary controller of an async consistency group (options["group"]):
    answer how far the group's updates have arrived and been applied here (document
    arrived_ns, applied_ns, pending); recover then applies up to the least arrived_ns."""
    PEER_WATERMARK = 27
    """Sent by a secondary controller of an async consistency group to its sibling
    secondaries: options["group"] and at_ns = every update stamped < at_ns has arrived here
    (journaled) from every primary that ships to this controller for the group."""
    # Host operations on an armed suspend (scheduled suspends, docs/protocol.md).
    SUSPEND_WAIT = 8
    """Answer once the suspend armed for at_ns on these devices has been sealed."""
    SUSPEND_CANCEL = 9
    """Disarm the suspend armed on these devices (at_ns 0: whatever T; else only that T)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairItem:
    device: int
    """The device this request acts on, on the controller it is sent to."""
    peer_serial: int = 0
    """The other side's controller serial (establish)."""
    peer_device: int = 0
    """The other side's device key (establish; or the tertiary for a shadow copy)."""
    mode: CopyMode | None = None
    fence: FencePolicy = FencePolicy.NEVER
    consistency_group: bool = False
    size_bytes: int = 0
    """The primary's capacity (peer establish: the secondary must be at least this big)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairOpRequest(Message):
    KIND: ClassVar[int] = 24
    op: PairOp = PairOp.ESTABLISH
    at_ns: int = 0
    """Suspend time T (SUSPEND), 0 otherwise."""
    items: tuple[PairItem, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    """Small operation-wide settings (e.g. hold_s, max_lag_s, action for PEER_STATE)."""
    packed: bytes = field(default=b"", compare=False, repr=False)
    """`pack_items(items)` made earlier, sent as is (a suspend packs before it chooses T, so
    the packing of thousands of items does not delay the request's arrival)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairResult:
    device: int
    code: int = 0
    """0 when done; otherwise the error code, and `message` says why."""
    state: PairState = PairState.SIMPLEX
    role: PairRole = PairRole.NONE
    at_ns: int = 0
    tracks: int = 0
    """Tracks that this operation will copy (establish, resume, failback, shadow)."""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairOpReply(Message):
    KIND: ClassVar[int] = 25
    results: tuple[PairResult, ...] = ()
    document: dict[str, Any] = field(default_factory=dict)
    """Operation-wide figures (seal time, late writes refused, ...)."""
    data: bytes = b""
    """Bulk answer (PEER_CHANGEMAP: the bitmap)."""


UPDATE_COPY: Final = 0x01  # a track copy (initial copy, resync), not a host write
UPDATE_ZERO: Final = 0x02  # the range is all zeros: `data` is only its length (u32)
_ZERO_LENGTH = struct.Struct("!I")


def zero_update(*, device: int, timestamp_ns: int, offset: int, length: int) -> Update:
    """An update that says "these bytes are zeros" without carrying them."""
    return Update(
        device=device,
        timestamp_ns=timestamp_ns,
        offset=offset,
        data=_ZERO_LENGTH.pack(length),
        flags=UPDATE_COPY | UPDATE_ZERO,
    )


def update_length(update: Update) -> int:
    """How many bytes of the volume an update covers."""
    if update.flags & UPDATE_ZERO:
        if len(update.data) != _ZERO_LENGTH.size:
            raise RemoteProtocolError("zero update must carry exactly its length")
        length: int = _ZERO_LENGTH.unpack(update.data)[0]
        return length
    return len(update.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Update:
    device: int
    """The secondary device key."""
    timestamp_ns: int
    offset: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateBatch(Message):
    KIND: ClassVar[int] = 26
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Watermark(Message):
    """Primary -> secondary, on the replication link, behind every update queued before it:
    every update stamped < watermark_ns that the sender will ever ship on this link has been
    sent. Answered with an UpdateAck of 0."""

    KIND: ClassVar[int] = 30
    watermark_ns: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateAck(Message):
    KIND: ClassVar[int] = 27
    applied: int = 0
    """How many updates of the batch were written to the secondary volumes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeRequest(Message):
    """Follow the controller's events: answered by EventNotice frames with this request id,
    first the replay (when `replay`), then SUBSCRIBED, then every new event as it happens."""

    KIND: ClassVar[int] = 28
    replay: bool = False
    """Send the kept events numbered after `after_seq` first (or a GAP if some are gone)."""
    after_seq: int = 0
    """The last event number the subscriber saw (0: none; replay everything kept)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventNotice(Message):
    KIND: ClassVar[int] = 29
    event: Event = field(default_factory=lambda: Event(kind=EventKind.SUBSCRIBED))
    """One event (remcopy.events): kind, number, controller, time and typed fields."""


# Encoding and decoding of bodies. One encoder and one decoder per kind, side by side.


def _pack_name(text: str, limit: int = NAME_SIZE_MAX_BYTES) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise LocalProtocolError(f"cannot send: text longer than {limit} bytes")
    return _U16.pack(len(raw)) + raw


def _unpack_name(body: memoryview, at: int, limit: int = NAME_SIZE_MAX_BYTES) -> tuple[str, int]:
    (size,) = _U16.unpack_from(body, at)
    at += _U16.size
    if size > limit:
        raise RemoteProtocolError(f"text of {size} bytes is over the limit of {limit}")
    raw = body[at : at + size]
    if len(raw) != size:
        raise RemoteProtocolError("text runs past the end of the frame")
    return str(raw, "utf-8"), at + size


def _pack_text(text: str) -> bytes:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= TEXT_SIZE_MAX_BYTES:
        return raw
    # Cut on a character boundary: half a UTF-8 sequence would make the peer refuse the frame.
    return raw[:TEXT_SIZE_MAX_BYTES].decode("utf-8", errors="ignore").encode("utf-8")


def _unpack_text(body: memoryview) -> str:
    if len(body) > TEXT_SIZE_MAX_BYTES:
        raise RemoteProtocolError(f"text of {len(body)} bytes is over {TEXT_SIZE_MAX_BYTES}")
    return str(body, "utf-8")


def _pack_devices(devices: tuple[int, ...]) -> bytes:
    if len(devices) > DEVICES_MAX:
        raise LocalProtocolError(f"cannot send more than {DEVICES_MAX} devices")
    return struct.pack(f"!{len(devices)}H", *devices)


def _unpack_devices(body: memoryview) -> tuple[int, ...]:
    if len(body) % 2:
        raise RemoteProtocolError("device list has an odd number of bytes")
    count = len(body) // 2
    if count > DEVICES_MAX:
        raise RemoteProtocolError(f"device list of {count} is over {DEVICES_MAX}")
    return struct.unpack(f"!{count}H", body)


def _unpack_records(body: memoryview, record: struct.Struct) -> list[tuple[Any, ...]]:
    if len(body) % record.size:
        raise RemoteProtocolError("record list is not a whole number of records")
    return list(record.iter_unpack(body))


def _state_code(state: PairState) -> int:
    return _STATES.index(state)


def _mode_code(mode: CopyMode | None) -> int:
    return _MODES.index(mode)


def _encode_body(msg: Message) -> tuple[int, list[bytes]]:
    """Return (flags, pieces) for a message: its body is the pieces end to end.

    Payloads are pieces of their own, never concatenated here, so `_frame_parts` can hand them
    to the transport as they are.
    """
    match msg:
        case Hello():
            if len(msg.nonce) != NONCE_SIZE_BYTES:
                raise LocalProtocolError("hello nonce has the wrong size")
            return 0, [_HELLO.pack(msg.version, msg.role, msg.nonce) + _pack_name(msg.name)]
        case Challenge():
            if len(msg.nonce) != NONCE_SIZE_BYTES:
                raise LocalProtocolError("challenge nonce has the wrong size")
            return 0, [_CHALLENGE.pack(msg.version, msg.nonce) + _pack_name(msg.name)]
        case Proof():
            if len(msg.proof) != PROOF_SIZE_BYTES:
                raise LocalProtocolError("proof has the wrong size")
            return 0, [msg.proof]
        case Welcome():
            if len(msg.proof) != PROOF_SIZE_BYTES:
                raise LocalProtocolError("welcome proof has the wrong size")
            return 0, [_WELCOME.pack(msg.serial, msg.proof) + _pack_name(msg.name)]
        case ErrorReply():
            return 0, [_ERROR.pack(msg.code) + _pack_text(msg.message)]
        case IdentifyRequest() | FlushRequest() | QueryRequest():
            return 0, [_pack_devices(msg.devices)]
        case IdentifyReply():
            return 0, [
                _IDENTITY.pack(
                    i.device,
                    i.status,
                    i.ssid,
                    i.serial,
                    i.capacity_bytes,
                    i.track_size_bytes,
                    _state_code(i.state),
                    _ROLES.index(i.role),
                    i.volser.encode("ascii"),
                )
                for i in msg.identities
            ]
        case ReadRequest():
            return 0, [_READ.pack(msg.device, msg.offset, msg.length)]
        case ReadReply():
            return 0, [msg.data]
        case WriteRequest():
            if len(msg.data) > IO_SIZE_MAX_BYTES:
                raise LocalProtocolError(f"cannot write more than {IO_SIZE_MAX_BYTES} bytes")
            flags = _FLAG_FUA if msg.fua else 0
            return flags, [_WRITE.pack(msg.device, msg.offset, msg.timestamp_ns), msg.data]
        case QueryReply():
            return 0, [_pack_device_status(s) for s in msg.statuses]
        case SubscribeRequest():
            return 0, [_SUBSCRIBE.pack(int(msg.replay), msg.after_seq)]
        case EventNotice():
            e = msg.event
            header = _EVENT.pack(e.seq, e.time_ns, e.serial, KIND_CODES.index(e.kind))
            return 0, [header + _json(e.fields())]
        case StatusReply():
            # Never truncated: half a JSON document is no document.
            return 0, [_json(msg.document)]
        case PairOpRequest():
            items = msg.packed or pack_items(msg.items)
            if len(items) != len(msg.items) * _PAIR_ITEM.size:
                raise ValueError(
                    f"packed items hold {len(items)} bytes: expected {len(msg.items)} items of "
                    f"{_PAIR_ITEM.size}"
                )
            return 0, [_PAIR_OP.pack(msg.op, msg.at_ns, len(msg.items)), items, _json(msg.options)]
        case PairOpReply():
            messages = {str(r.device): r.message for r in msg.results if r.message}
            doc = _json({"messages": messages, "document": msg.document})
            records = b"".join(
                _PAIR_RESULT.pack(
                    r.device, r.code, _state_code(r.state), _ROLES.index(r.role), r.at_ns, r.tracks
                )
                for r in msg.results
            )
            return 0, [_COUNTS.pack(len(msg.results), len(doc)), records, doc, msg.data]
        case UpdateBatch():
            pieces = [_U32.pack(len(msg.updates))]
            for u in msg.updates:
                pieces.append(
                    _UPDATE.pack(u.device, u.flags, u.timestamp_ns, u.offset, len(u.data))
                )
                pieces.append(u.data)
            return 0, pieces
        case UpdateAck():
            return 0, [_U32.pack(msg.applied)]
        case Watermark():
            return 0, [_U64.pack(msg.watermark_ns)]
        case WriteReply() | FlushReply() | StatusRequest():
            return 0, []
    raise LocalProtocolError(f"cannot encode {type(msg).__name__}")


def _decode_hello(rid: int, flags: int, body: memoryview) -> Message:
    (version,) = _U16.unpack_from(body, 0)
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version mismatch: peer speaks version {version}, "
            f"this end speaks version {PROTOCOL_VERSION}"
        )
    _version, role, nonce = _HELLO.unpack_from(body, 0)
    name, end = _unpack_name(body, _HELLO.size)
    _expect_end(body, end)
    return Hello(request_id=rid, version=version, role=PeerRole(role), name=name, nonce=nonce)


def _decode_challenge(rid: int, flags: int, body: memoryview) -> Message:
    (version,) = _U16.unpack_from(body, 0)
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version mismatch: controller speaks version {version}, "
            f"this end speaks version {PROTOCOL_VERSION}"
        )
    _v, nonce = _CHALLENGE.unpack_from(body, 0)
    name, end = _unpack_name(body, _CHALLENGE.size)
    _expect_end(body, end)
    return Challenge(request_id=rid, version=version, name=name, nonce=nonce)


def _decode_proof(rid: int, flags: int, body: memoryview) -> Message:
    if len(body) != PROOF_SIZE_BYTES:
        raise RemoteProtocolError(f"proof must be {PROOF_SIZE_BYTES} bytes (got {len(body)})")
    return Proof(request_id=rid, proof=bytes(body))


def _decode_welcome(rid: int, flags: int, body: memoryview) -> Message:
    serial, proof = _WELCOME.unpack_from(body, 0)
    name, end = _unpack_name(body, _WELCOME.size)
    _expect_end(body, end)
    return Welcome(request_id=rid, serial=serial, name=name, proof=proof)


def _decode_error(rid: int, flags: int, body: memoryview) -> Message:
    (code,) = _ERROR.unpack_from(body, 0)
    return ErrorReply(request_id=rid, code=code, message=_unpack_text(body[_ERROR.size :]))


def _decode_identify_reply(rid: int, flags: int, body: memoryview) -> Message:
    identities = tuple(
        DeviceIdentity(
            device=d,
            status=st,
            ssid=ssid,
            serial=serial,
            capacity_bytes=cap,
            track_size_bytes=track,
            state=_STATES[state],
            role=_ROLES[role],
            volser=volser.rstrip(b"\0 ").decode("ascii"),
        )
        for d, st, ssid, serial, cap, track, state, role, volser in _unpack_records(body, _IDENTITY)
    )
    return IdentifyReply(request_id=rid, identities=identities)


def _decode_read(rid: int, flags: int, body: memoryview) -> Message:
    device, offset, length = _READ.unpack(body)
    if length > IO_SIZE_MAX_BYTES:
        raise RemoteProtocolError(f"read of {length} bytes is over {IO_SIZE_MAX_BYTES}")
    return ReadRequest(request_id=rid, device=device, offset=offset, length=length)


def _decode_write(rid: int, flags: int, body: memoryview) -> Message:
    device, offset, timestamp_ns = _WRITE.unpack_from(body, 0)
    size = len(body) - _WRITE.size
    if size > IO_SIZE_MAX_BYTES:
        raise RemoteProtocolError(f"write of {size} bytes is over {IO_SIZE_MAX_BYTES}")
    return WriteRequest(
        request_id=rid,
        device=device,
        offset=offset,
        timestamp_ns=timestamp_ns,
        fua=bool(flags & _FLAG_FUA),
        data=bytes(body[_WRITE.size :]),  # the payload's one copy
    )


def _pack_device_status(s: DeviceStatus) -> bytes:
    cause = s.change_cause.encode("utf-8", errors="replace")[:_CAUSE_SIZE_MAX_BYTES]
    return (
        _DEVICE_STATUS.pack(
            s.device,
            s.status,
            _state_code(s.state),
            _ROLES.index(s.role),
            _mode_code(s.mode),
            s.flags,
            s.suspend_at_ns,
            s.dirty_tracks,
            s.lag_bytes,
            s.lag_ns,
            s.peer_serial,
            s.peer_device,
            s.copy_left_tracks,
            _FENCES.index(s.fence),
            int(s.consistency_group),
            s.tracks,
            s.changed_at_ns,
            s.consistency_time_ns,
            s.journal_bytes,
            len(cause),
        )
        + cause
    )


def _decode_query_reply(rid: int, flags: int, body: memoryview) -> Message:
    statuses = []
    offset, end = 0, len(body)
    fixed = _DEVICE_STATUS.size
    unpack = _DEVICE_STATUS.unpack_from
    while offset < end:
        if end - offset < fixed:
            raise RemoteProtocolError("device status record cut short")
        (
            d, st, state, role, mode, fl, at, dirty, lag_b, lag_ns, ps, pd, left,
            fence, cg, tracks, changed_ns, cons, journal, cause_len,
        ) = unpack(body, offset)  # fmt: skip
        offset += fixed
        if end - offset < cause_len:
            raise RemoteProtocolError("device status cause cut short")
        cause = str(body[offset : offset + cause_len], "utf-8")
        offset += cause_len
        statuses.append(
            DeviceStatus(
                device=d,
                status=st,
                state=_STATES[state],
                role=_ROLES[role],
                mode=_MODES[mode],
                flags=fl,
                suspend_at_ns=at,
                dirty_tracks=dirty,
                lag_bytes=lag_b,
                lag_ns=lag_ns,
                peer_serial=ps,
                peer_device=pd,
                copy_left_tracks=left,
                fence=_FENCES[fence],
                consistency_group=bool(cg),
                tracks=tracks,
                changed_at_ns=changed_ns,
                change_cause=cause,
                consistency_time_ns=cons,
                journal_bytes=journal,
            )
        )
    return QueryReply(request_id=rid, statuses=tuple(statuses))


def _decode_status_reply(rid: int, flags: int, body: memoryview) -> Message:
    return StatusReply(request_id=rid, document=_unjson(body))


def _decode_subscribe(rid: int, flags: int, body: memoryview) -> Message:
    replay, after_seq = _SUBSCRIBE.unpack_from(body, 0)
    _expect_end(body, _SUBSCRIBE.size)
    if replay > 1:
        raise RemoteProtocolError(f"subscribe: replay must be 0 or 1 (got {replay})")
    return SubscribeRequest(request_id=rid, replay=bool(replay), after_seq=after_seq)


def _decode_event(rid: int, flags: int, body: memoryview) -> Message:
    seq, time_ns, serial, kind = _EVENT.unpack_from(body, 0)
    rest = body[_EVENT.size :]
    if len(rest) > EVENT_SIZE_MAX_BYTES:
        raise RemoteProtocolError(f"event of {len(rest)} bytes is over {EVENT_SIZE_MAX_BYTES}")
    if kind >= len(KIND_CODES):
        raise RemoteProtocolError(f"unknown event kind {kind}")
    event = from_fields(
        KIND_CODES[kind], seq=seq, serial=serial, time_ns=time_ns, fields=_unjson(rest)
    )
    return EventNotice(request_id=rid, event=event)


def _json(document: dict[str, Any]) -> bytes:
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > DOCUMENT_SIZE_MAX_BYTES:
        raise LocalProtocolError(
            f"cannot send a JSON document over {DOCUMENT_SIZE_MAX_BYTES} bytes"
        )
    return raw


def _unjson(raw: memoryview) -> dict[str, Any]:
    if len(raw) > DOCUMENT_SIZE_MAX_BYTES:
        raise RemoteProtocolError(
            f"JSON document of {len(raw)} bytes is over {DOCUMENT_SIZE_MAX_BYTES}"
        )
    document = json.loads(str(raw, "utf-8")) if raw else {}
    if not isinstance(document, dict):
        raise RemoteProtocolError("expected a JSON object")
    return document


def pack_items(items: tuple[PairItem, ...]) -> bytes:
    """The items of a PairOpRequest as they go on the wire."""
    return b"".join(
        _PAIR_ITEM.pack(
            i.device,
            i.peer_serial,
            i.peer_device,
            _mode_code(i.mode),
            _FENCES.index(i.fence),
            int(i.consistency_group),
            i.size_bytes,
        )
        for i in items
    )


def _decode_pair_op(rid: int, flags: int, body: memoryview) -> Message:
    op, at_ns, count = _PAIR_OP.unpack_from(body, 0)
    if count > DEVICES_MAX:
        raise RemoteProtocolError(f"pair operation on {count} devices is over {DEVICES_MAX}")
    end = _PAIR_OP.size + count * _PAIR_ITEM.size
    items = tuple(
        PairItem(
            device=d,
            peer_serial=ps,
            peer_device=pd,
            mode=_MODES[mode],
            fence=_FENCES[fence],
            consistency_group=bool(cg),
            size_bytes=size,
        )
        for d, ps, pd, mode, fence, cg, size in _unpack_records(
            body[_PAIR_OP.size : end], _PAIR_ITEM
        )
    )
    if len(items) != count:
        raise RemoteProtocolError("pair operation is shorter than its item count")
    return PairOpRequest(
        request_id=rid, op=PairOp(op), at_ns=at_ns, items=items, options=_unjson(body[end:])
    )


def _decode_pair_reply(rid: int, flags: int, body: memoryview) -> Message:
    count, doc_size = _COUNTS.unpack_from(body, 0)
    if count > DEVICES_MAX:
        raise RemoteProtocolError(f"pair reply for {count} devices is over {DEVICES_MAX}")
    end = _COUNTS.size + count * _PAIR_RESULT.size
    records = _unpack_records(body[_COUNTS.size : end], _PAIR_RESULT)
    if len(records) != count or len(body) < end + doc_size:
        raise RemoteProtocolError("pair reply is shorter than its counts")
    doc = _unjson(body[end : end + doc_size])
    messages = doc.get("messages", {})
    document = doc.get("document", {})
    if not isinstance(messages, dict) or not isinstance(document, dict):
        raise RemoteProtocolError("pair reply document is malformed")
    results = tuple(
        PairResult(
            device=d,
            code=code,
            state=_STATES[state],
            role=_ROLES[role],
            at_ns=at,
            tracks=tracks,
            message=str(messages.get(str(d), "")),
        )
        for d, code, state, role, at, tracks in records
    )
    return PairOpReply(
        request_id=rid, results=results, document=document, data=bytes(body[end + doc_size :])
    )


def _decode_update_batch(rid: int, flags: int, body: memoryview) -> Message:
    (count,) = _U32.unpack_from(body, 0)
    at = _U32.size
    updates = []
    for _ in range(min(count, DEVICES_MAX * 16)):
        device, uflags, stamp, offset, length = _UPDATE.unpack_from(body, at)
        at += _UPDATE.size
        if at + length > len(body):
            raise RemoteProtocolError("update runs past the end of the batch")
        data = bytes(body[at : at + length])  # the payload's one copy
        at += length
        updates.append(
            Update(device=device, flags=uflags, timestamp_ns=stamp, offset=offset, data=data)
        )
    if len(updates) != count:
        raise RemoteProtocolError(f"update batch of {count} updates is over the limit")
    _expect_end(body, at)
    return UpdateBatch(request_id=rid, updates=tuple(updates))


def _empty(cls: type[Message]) -> Callable[[int, int, memoryview], Message]:
    def decode(rid: int, flags: int, body: memoryview) -> Message:
        _expect_end(body, 0)
        return cls(request_id=rid)

    return decode


def _devices(
    cls: type[IdentifyRequest] | type[FlushRequest] | type[QueryRequest],
) -> Callable[[int, int, memoryview], Message]:
    def decode(rid: int, flags: int, body: memoryview) -> Message:
        return cls(request_id=rid, devices=_unpack_devices(body))

    return decode


def _expect_end(body: memoryview, end: int) -> None:
    if len(body) != end:
        raise RemoteProtocolError(f"frame has {len(body) - end} unexpected trailing bytes")


_Decoder = Callable[[int, int, memoryview], Message]
_DECODERS: Final[dict[int, _Decoder]] = {
    Hello.KIND: _decode_hello,
    Challenge.KIND: _decode_challenge,
    Proof.KIND: _decode_proof,
    Welcome.KIND: _decode_welcome,
    ErrorReply.KIND: _decode_error,
    IdentifyRequest.KIND: _devices(IdentifyRequest),
    IdentifyReply.KIND: _decode_identify_reply,
    ReadRequest.KIND: _decode_read,
    ReadReply.KIND: lambda rid, flags, body: ReadReply(request_id=rid, data=bytes(body)),
    WriteRequest.KIND: _decode_write,
    WriteReply.KIND: _empty(WriteReply),
    FlushRequest.KIND: _devices(FlushRequest),
    FlushReply.KIND: _empty(FlushReply),
    QueryRequest.KIND: _devices(QueryRequest),
    QueryReply.KIND: _decode_query_reply,
    SubscribeRequest.KIND: _decode_subscribe,
    EventNotice.KIND: _decode_event,
    StatusRequest.KIND: _empty(StatusRequest),
    StatusReply.KIND: _decode_status_reply,
    PairOpRequest.KIND: _decode_pair_op,
    PairOpReply.KIND: _decode_pair_reply,
    UpdateBatch.KIND: _decode_update_batch,
    UpdateAck.KIND: lambda rid, flags, body: UpdateAck(
        request_id=rid, applied=_U32.unpack(body)[0]
    ),
    Watermark.KIND: lambda rid, flags, body: Watermark(
        request_id=rid, watermark_ns=_U64.unpack(body)[0]
    ),
}

_HANDSHAKE_FROM_CLIENT: Final = frozenset({Hello.KIND, Proof.KIND})
_HANDSHAKE_FROM_SERVER: Final = frozenset({Challenge.KIND, Welcome.KIND, ErrorReply.KIND})
# What a client (host or peer) may send once authenticated, and what a server may answer.
REQUEST_KINDS: Final = frozenset(
    {
        IdentifyRequest.KIND,
        ReadRequest.KIND,
        WriteRequest.KIND,
        FlushRequest.KIND,
        QueryRequest.KIND,
        SubscribeRequest.KIND,
        StatusRequest.KIND,
        PairOpRequest.KIND,
        UpdateBatch.KIND,
        Watermark.KIND,
    }
)
REPLY_KINDS: Final = frozenset(
    {
        ErrorReply.KIND,
        IdentifyReply.KIND,
        ReadReply.KIND,
        WriteReply.KIND,
        FlushReply.KIND,
        QueryReply.KIND,
        EventNotice.KIND,
        StatusReply.KIND,
        PairOpReply.KIND,
        UpdateAck.KIND,
    }
)


def encode(msg: Message) -> bytes:
    """One whole frame for a message, regardless of phase (for tests and tools)."""
    return b"".join(_frame_parts(msg))


def _frame_parts(msg: Message) -> list[bytes]:
    """A whole frame as parts to write in order: the header joined with the small pieces
    that follow it, and each payload of _GATHER_MIN_BYTES or more as a part of its own."""
    flags, pieces = _encode_body(msg)
    length = _HEADER_AFTER_LENGTH_BYTES + sum(len(piece) for piece in pieces)
    if length > FRAME_SIZE_MAX_BYTES:
        raise LocalProtocolError(f"frame over {FRAME_SIZE_MAX_BYTES} bytes")
    parts: list[bytes] = []
    small = [_HEADER.pack(length, msg.KIND, flags, 0, msg.request_id)]
    for piece in pieces:
        if len(piece) < _GATHER_MIN_BYTES:
            small.append(piece)
            continue
        if small:
            parts.append(b"".join(small))
            small = []
        # A transport may hold a part until the socket takes it: only an immutable bytes object
        # is handed over as it is, anything else a caller passed is copied first.
        parts.append(piece if type(piece) is bytes else bytes(piece))
    if small:
        parts.append(b"".join(small))
    return parts


def _decode(kind: int, flags: int, request_id: int, body: memoryview) -> Message:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RemoteProtocolError(f"unknown frame kind {kind}")
    try:
        return decoder(request_id, flags, body)
    except RemcopyError:
        raise
    # RecursionError: json.loads on a deeply nested status document.
    except (
        struct.error,
        UnicodeDecodeError,
        ValueError,
        IndexError,
        TypeError,
        RecursionError,
    ) as exc:
        raise RemoteProtocolError(f"malformed {kind=} frame: {exc}") from exc


class Connection:
    """One end of a native-protocol connection: bytes in, messages out, messages in, bytes out.

    The server side accepts HELLO, then PROOF, then requests; the client side accepts
    CHALLENGE, then WELCOME, then replies. Sending WELCOME (server) or receiving it (client)
    makes the connection READY. Sending or receiving an error during the handshake closes it.
    """

    def __init__(self, side: Side) -> None:
        self.side = side
        self.phase = Phase.HELLO
        # The receive buffer: bytes [_start, _end) are received and not yet decoded. It is
        # never resized in place (a view of it may be alive while a frame decodes): growing
        # replaces it, and the old one lives on only as long as such a view.
        self._buffer = bytearray()
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._offered_bytes = 0  # room the last get_buffer offered; 0 when none is out
        self._read_filled = False  # the last read filled all the room it was offered
        self._eof = False
        self._proof_sent = False  # client: WELCOME is accepted only after our PROOF
        self.frames_received = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        return (
            f"<native.Connection {self.side.value} {self.phase.name} "
            f"frames={self.frames_received} buffered={self.buffered_bytes}>"
        )

    def _invariants(self) -> None:
        assert 0 <= self._start <= self._end <= len(self._buffer), (self._start, self._end)
        assert self._view.obj is self._buffer
        assert self._offered_bytes <= len(self._buffer) - self._end

    # Receiving...

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet decoded: a shell stops reading when this is too much."""
        return self._end - self._start

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer (copied into the buffer); b"" means the peer closed its end."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("received data after end of file")
        size = len(data)
        self._offered_bytes = 0
        self._reserve(size)
        self._view[self._end : self._end + size] = data
        self._end += size
        self.bytes_received += size
        self._invariants()

    def get_buffer(self, size_hint: int = -1) -> memoryview:
        """Free room at the end of the receive buffer, for the next read to fill in place.

        The shape of asyncio.BufferedProtocol.get_buffer: read into the view, then report how
        many bytes arrived with `buffer_updated`, before any other call on this connection.
        The room is at least RECEIVE_ROOM_MIN_BYTES, and grows toward the rest of the frame
        whose header is here by at most what of it has arrived (so memory follows the bytes
        received, not the length a header claims); `size_hint` is ignored.
        """
        if self._eof:
            raise LocalProtocolError("get_buffer after end of file")
        buffered = self._end - self._start
        room = RECEIVE_ROOM_MIN_BYTES
        if buffered >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, self._start)
            frame = _LENGTH.size + min(length, self._frame_limit())
            # Room for the rest of the frame, but never more than twice what has arrived: a
            # header alone cannot make the buffer grow to the length it claims.
            room = max(room, min(frame - buffered, buffered))
        capacity = len(self._buffer)
        if self._read_filled and capacity < RECEIVE_BUFFER_BYTES:
            room = max(room, min(2 * capacity, RECEIVE_BUFFER_BYTES) - buffered)
        self._reserve(room)
        self._offered_bytes = len(self._buffer) - self._end
        self._invariants()
        return self._view[self._end :]

    def _frame_limit(self) -> int:
        """The largest frame length taken now: small until the handshake is done."""
        return FRAME_SIZE_MAX_BYTES if self.phase is Phase.READY else HANDSHAKE_FRAME_MAX_BYTES

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were read into the view the last get_buffer returned."""
        if not 0 <= nbytes <= self._offered_bytes:
            raise LocalProtocolError(
                f"buffer_updated({nbytes}) outside the {self._offered_bytes} bytes offered"
            )
        self._read_filled = nbytes == self._offered_bytes
        self._offered_bytes = 0
        self._end += nbytes
        self.bytes_received += nbytes
        self._invariants()

    def _reserve(self, room: int) -> None:
        """Make `room` bytes free after the buffered ones: rewind, compact, or grow."""
        buffered = self._end - self._start
        if buffered == 0:
            self._start = self._end = 0
        if len(self._buffer) - self._end >= room:
            return
        if len(self._buffer) - buffered >= room:
            # Only the start of a frame moves: everything before it was decoded.
            self._view[:buffered] = self._view[self._start : self._end]
        else:
            grown = bytearray(max(buffered + room, RECEIVE_BUFFER_START_BYTES))
            grown[:buffered] = self._view[self._start : self._end]
            self._buffer, self._view = grown, memoryview(grown)
        self._start, self._end = 0, buffered

    def next_event(self) -> Message | _Sentinel:
        """The next whole message, NEED_DATA, or CLOSED; raises RemoteProtocolError."""
        if self.phase is Phase.CLOSED:
            return CLOSED
        start = self._start
        buffered = self._end - start
        if buffered < _HEADER.size:
            return self._need_data_or_closed()
        length, kind, flags, _reserved, request_id = _HEADER.unpack_from(self._buffer, start)
        limit = self._frame_limit()
        if length < _HEADER_AFTER_LENGTH_BYTES or length > limit:
            self.phase = Phase.CLOSED
            before = "" if limit == FRAME_SIZE_MAX_BYTES else " before authentication"
            raise RemoteProtocolError(
                f"frame length {length} is outside {_HEADER_AFTER_LENGTH_BYTES}..{limit}{before}"
            )
        total = _LENGTH.size + length
        if buffered < total:
            return self._need_data_or_closed()
        # Decoded in place: the decoders copy what they keep, so the view dies with this call.
        body = self._view[start + _HEADER.size : start + total]
        self._start = start + total
        self.frames_received += 1
        try:
            self._check_kind_allowed(kind)
            msg = _decode(kind, flags, request_id, body)
        except RemcopyError:
            self.phase = Phase.CLOSED
            raise
        self._advance_on_receive(msg)
        return msg

    def _need_data_or_closed(self) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        self.phase = Phase.CLOSED
        if self._end > self._start:
            raise RemoteProtocolError(
                f"connection closed inside a frame ({self._end - self._start} bytes left)"
            )
        return CLOSED

    def _check_kind_allowed(self, kind: int) -> None:
        ready = self.phase is Phase.READY
        if self.side is Side.SERVER:
            allowed = REQUEST_KINDS if ready else _HANDSHAKE_FROM_CLIENT
        else:
            allowed = REPLY_KINDS if ready else _HANDSHAKE_FROM_SERVER
        if kind in allowed:
            return
        if not ready and kind in REQUEST_KINDS:
            raise RemoteProtocolError(f"request kind {kind} before authentication")
        raise RemoteProtocolError(
            f"frame kind {kind} is not allowed from the {self._peer_side()} in phase "
            f"{self.phase.value}"
        )

    def _peer_side(self) -> str:
        return "client" if self.side is Side.SERVER else "server"

    def _advance_on_receive(self, msg: Message) -> None:
        if self.side is Side.SERVER:
            if self.phase is Phase.HELLO and not isinstance(msg, Hello):
                self.phase = Phase.CLOSED
                raise RemoteProtocolError("expected HELLO first")
            if self.phase is Phase.PROOF and not isinstance(msg, Proof):
                self.phase = Phase.CLOSED
                raise RemoteProtocolError("expected PROOF after the challenge")
        elif self.phase is not Phase.READY:
            if isinstance(msg, ErrorReply):
                self.phase = Phase.CLOSED
            elif isinstance(msg, Welcome):
                if self.phase is not Phase.PROOF or not self._proof_sent:
                    self.phase = Phase.CLOSED
                    raise RemoteProtocolError("WELCOME before the challenge was answered")
                self.phase = Phase.READY
            elif isinstance(msg, Challenge) and self.phase is not Phase.PROOF:
                self.phase = Phase.CLOSED
                raise RemoteProtocolError("CHALLENGE before HELLO was sent")

    # Sending...

    def send(self, msg: Message) -> bytes:
        """The bytes to write for a message; checks it fits this side and phase."""
        return b"".join(self.send_parts(msg))

    def send_parts(self, msg: Message) -> list[bytes]:
        """`send` as parts for `transport.writelines`: header and small fields joined, each
        payload a part of its own and not copied. The parts are immutable bytes."""
        if self.phase is Phase.CLOSED and not isinstance(msg, ErrorReply):
            raise LocalProtocolError("cannot send on a closed connection")
        parts = _frame_parts(msg)  # first, so a message that cannot be encoded changes no phase
        self._advance_on_send(msg)
        return parts

    def _advance_on_send(self, msg: Message) -> None:
        kind = msg.KIND
        if self.side is Side.CLIENT:
            if self.phase is Phase.HELLO and isinstance(msg, Hello):
                self.phase = Phase.PROOF
            elif self.phase is Phase.PROOF and isinstance(msg, Proof):
                self._proof_sent = True
            elif not (self.phase is Phase.READY and kind in REQUEST_KINDS):
                raise LocalProtocolError(
                    f"client cannot send {type(msg).__name__} in phase {self.phase.value}"
                )
            return
        if isinstance(msg, ErrorReply):
            if self.phase is not Phase.READY:
                self.phase = Phase.CLOSED
        elif self.phase is Phase.HELLO and isinstance(msg, Challenge):
            self.phase = Phase.PROOF
        elif self.phase is Phase.PROOF and isinstance(msg, Welcome):
            self.phase = Phase.READY
        elif not (self.phase is Phase.READY and kind in REPLY_KINDS):
            raise LocalProtocolError(
                f"server cannot send {type(msg).__name__} in phase {self.phase.value}"
            )
