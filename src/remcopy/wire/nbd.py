# The server side of the Network Block Device protocol: a sans-I/O codec.
#
# Why it exists: every remcopy volume is exported over NBD (export name = volser), so stock
# tools such as qemu-img, nbdcopy, nbdinfo and qemu-io can read and write it. No NBD server
# library exists for Python, so this module speaks the protocol as the NBD project's
# `doc/proto.md` defines it. It holds no socket and imports no asyncio: the controller's shell
# feeds it bytes, acts on the events it returns, and writes out what it queues. So every byte
# of the protocol is tested without a network and fuzzed with Hypothesis.
#
# Theory of operation
# - Handshake: fixed newstyle only. The greeting (NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE and
#   NO_ZEROES) is queued on construction. The codec then reads the client flags and the
#   options, and answers every option itself: LIST, INFO, GO, STRUCTURED_REPLY, STARTTLS
#   (refused: no TLS yet) and any unknown option (NBD_REP_ERR_UNSUP, never a dropped
#   connection). The shell hears only how the handshake ends: `ExportChosen` after GO or
#   EXPORT_NAME, or `ConnectionClosed`.
# - Transmission: every request is validated in one place, `_validate`, before the shell sees
#   it, as nbdkit's `validate_request` does. A bad request is answered by the codec and
#   reported as `RequestRejected`; only a valid one becomes a request event, which the shell
#   answers with `reply_read`, `reply_ok` or `reply_error`, in any order.
# - Structured replies are offered: a READ is answered with one OFFSET_DATA chunk (so the
#   don't-fragment flag is always honoured), and every error with an ERROR chunk that carries
#   the message, which clients such as nbdinfo show to the user.
#
# Rules this module keeps:
# - Never act on a partial frame: bytes are read with `consume_exactly` and either committed
#   as a whole message or rolled back.
# - Hostile bytes produce events and nothing else: a violation after which the connection must
#   be dropped becomes `ConnectionClosed` with the `RemoteProtocolError` attached.
# - Everything is bounded by a named constant: the receive buffer never has to hold more than
#   one message, and the payload of a write the codec refuses, or of an oversized option, is
#   discarded as it streams in, never buffered.
# - `LocalProtocolError` means the shell misused the codec (an unknown handle, a read reply of
#   the wrong length): our bug, never the peer's.
from __future__ import annotations

import enum
import errno as errno_module
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from remcopy.errors import LocalProtocolError, RemoteProtocolError

# Limits.

# READ and WRITE carry their data in one message, so this bounds the receive buffer and each
# reply. 32 MiB (2^25) is the figure proto.md names: clients "desiring maximum
# interoperability" limit READ and WRITE to it, and a server SHOULD NOT treat a smaller length
# as a denial of service. qemu's NBD_MAX_BUFFER_SIZE is 32 MiB too. It is advertised as the
# maximum block size in NBD_INFO_BLOCK_SIZE.
REQUEST_SIZE_MAX_BYTES: Final = 32 * 1024 * 1024
# The largest option we parse is INFO/GO: 4 + a name of at most 4096 bytes + 2 + 2 per
# information request. Other servers' options (meta-context queries) are of the same order.
# 64 KiB is 16 times a maximal valid name and still nothing to hold in memory; a longer option
# is discarded as it arrives and answered NBD_REP_ERR_TOO_BIG.
OPTION_SIZE_MAX_BYTES: Final = 64 * 1024
# proto.md: a string (export name, message) "MUST be no longer than 4096 bytes".
STRING_SIZE_MAX_BYTES: Final = 4096
# Options per handshake before we hang up (proto.md allows it against denial of service).
# nbdkit's MAX_NR_OPTIONS is 32 and libnbd's ordinary handshake sends fewer than 10. A LIST
# adds 32 per listed export once, as nbdkit does, so `nbdinfo --list` can INFO every export.
OPTIONS_MAX: Final = 32
# Advertised in NBD_INFO_BLOCK_SIZE: any alignment works (files), 4 KiB avoids the page
# read-modify-write, and the maximum is the request limit above.
BLOCK_SIZE_MIN_BYTES: Final = 1
BLOCK_SIZE_PREFERRED_BYTES: Final = 4096

# Wire format, network order.

_NBDMAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC"
_IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT"
_OPTION_REPLY_MAGIC: Final = 0x0003E889045565A9
_REQUEST_MAGIC: Final = 0x25609513
_SIMPLE_REPLY_MAGIC: Final = 0x67446698
_STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF

_GREETING = struct.Struct("!QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
_CLIENT_FLAGS = struct.Struct("!I")
_OPTION = struct.Struct("!QII")  # IHAVEOPT, option, length; then data
_OPTION_REPLY = struct.Struct("!QIII")  # magic, option, reply type, length; then data
_EXPORT_NAME_REPLY = struct.Struct("!QH")  # size, transmission flags; then 124 zeroes
_INFO_EXPORT = struct.Struct("!HQH")  # NBD_INFO_EXPORT, size, transmission flags
_INFO_BLOCK_SIZE = struct.Struct("!HIII")  # NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_REQUEST = struct.Struct("!IHHQQI")  # magic, flags, type, handle, offset, length
_SIMPLE_REPLY = struct.Struct("!IIQ")  # magic, error, handle; then data of a READ
_STRUCTURED_REPLY = struct.Struct("!IHHQI")  # magic, flags, type, handle, length
_OFFSET = struct.Struct("!Q")
_ERROR_CHUNK = struct.Struct("!IH")  # error, message length; then message

_FLAG_FIXED_NEWSTYLE: Final = 1 << 0  # handshake flags, and client flags with the same bits
_FLAG_NO_ZEROES: Final = 1 << 1
_ZEROES: Final = bytes(124)

_REP_ACK: Final = 1
_REP_SERVER: Final = 2
_REP_INFO: Final = 3
_REP_ERR_UNSUP: Final = 2**31 + 1
_REP_ERR_POLICY: Final = 2**31 + 2
_REP_ERR_INVALID: Final = 2**31 + 3
_REP_ERR_TLS_REQD: Final = 2**31 + 5
_REP_ERR_UNKNOWN: Final = 2**31 + 6
_REP_ERR_TOO_BIG: Final = 2**31 + 9

_INFO_EXPORT_TYPE: Final = 0
_INFO_NAME: Final = 1
_INFO_DESCRIPTION: Final = 2
_INFO_BLOCK_SIZE_TYPE: Final = 3

# Transmission flags.
_HAS_FLAGS: Final = 1 << 0
_READ_ONLY: Final = 1 << 1
_SEND_FLUSH: Final = 1 << 2
_SEND_FUA: Final = 1 << 3
_SEND_TRIM: Final = 1 << 5
_SEND_WRITE_ZEROES: Final = 1 << 6
_SEND_DF: Final = 1 << 7
_CAN_MULTI_CONN: Final = 1 << 8

# Command flags.
_CMD_FLAG_FUA: Final = 1 << 0
_CMD_FLAG_NO_HOLE: Final = 1 << 1
_CMD_FLAG_DF: Final = 1 << 2
_CMD_FLAG_NAMES: Final = {1 << 0: "FUA", 1 << 1: "NO_HOLE", 1 << 2: "DF", 1 << 3: "REQ_ONE"}

_REPLY_FLAG_DONE: Final = 1 << 0
_REPLY_TYPE_NONE: Final = 0
_REPLY_TYPE_OFFSET_DATA: Final = 1
_REPLY_TYPE_ERROR: Final = 2**15 + 1

# `parts_to_send`: a queued piece this large is written as its own buffer (not copied into a
# joined one); smaller ones are joined with their neighbours.
PART_SEPARATE_MIN_BYTES: Final = 16 * 1024


class _Option(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10


class _Command(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


_SERVED_COMMANDS: Final = frozenset(
    {_Command.READ, _Command.WRITE, _Command.FLUSH, _Command.TRIM, _Command.WRITE_ZEROES}
)
_WRITING_COMMANDS: Final = frozenset({_Command.WRITE, _Command.TRIM, _Command.WRITE_ZEROES})
_KNOWN_COMMANDS: Final = frozenset(_Command)
# The transmission flag a command needs to have been advertised.
_COMMAND_NEEDS: Final[dict[int, int]] = {
    _Command.FLUSH: _SEND_FLUSH,
    _Command.TRIM: _SEND_TRIM,
    _Command.WRITE_ZEROES: _SEND_WRITE_ZEROES,
}


class NbdError(enum.IntEnum):
    """The error values a reply may carry (proto.md "Error values").

    EOVERFLOW and ENOTSUP are left out on purpose: the spec allows them only for the DF and
    FAST_ZERO flags, and we never fragment a read nor advertise fast zeroing.
    """

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    ESHUTDOWN = 108


# System errno names the shell may pass to `reply_error`, mapped as nbdkit's `nbd_errno`
# maps them. Any other errno is sent as EINVAL, which proto.md tells clients to assume.
_ERRNO_NAMES: Final = {
    "EPERM": NbdError.EPERM,
    "EROFS": NbdError.EPERM,
    "EIO": NbdError.EIO,
    "ENOMEM": NbdError.ENOMEM,
    "EINVAL": NbdError.EINVAL,
    "ENOSPC": NbdError.ENOSPC,
    "EDQUOT": NbdError.ENOSPC,
    "EFBIG": NbdError.ENOSPC,
    "ESHUTDOWN": NbdError.ESHUTDOWN,
}


class NeedData(enum.Enum):
    """The type of `NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by `next_event` when no whole message is buffered: call `receive_data` first."""


class NbdState(enum.Enum):
    CLIENT_FLAGS = "CLIENT_FLAGS"  # greeting queued, waiting for the client's flags
    OPTIONS = "OPTIONS"  # option haggling
    TRANSMISSION = "TRANSMISSION"  # requests flow
    DISCONNECTED = "DISCONNECTED"  # the client sent NBD_CMD_DISC: answer what is in flight
    CLOSED = "CLOSED"  # the connection must be dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportInfo:
    """What the shell's `lookup` tells the codec about one export."""

    name: str
    """Canonical export name (the volser), at most 4096 bytes of UTF-8 without NUL."""
    size_bytes: int
    """Export size; requests must stay inside it."""
    read_only: bool = False
    """Refuse WRITE, TRIM and WRITE_ZEROES with EPERM (a secondary that is not RECOVERED)."""
    description: str = ""
    """Shown by clients that ask for NBD_INFO_DESCRIPTION; empty means none."""
    can_flush: bool = True
    """Advertise NBD_CMD_FLUSH."""
    can_fua: bool = True
    """Advertise the FUA flag (writable exports only)."""
    can_trim: bool = False
    """Advertise NBD_CMD_TRIM (writable exports only)."""
    can_zero: bool = True
    """Advertise NBD_CMD_WRITE_ZEROES (writable exports only)."""
    can_multi_conn: bool = False
    """Advertise that FLUSH and FUA are visible across all connections to this export."""


# Events. `next_event` returns them; the shell answers the request events.


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of the events `NbdServerConnection.next_event` returns."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportChosen(Event):
    """The handshake ended: the client uses this export and requests may follow."""

    name: str
    """The name the client asked for; "" for the default export."""
    info: ExportInfo
    """The export as `lookup` returned it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest(Event):
    """Read `length` bytes at `offset`; answer with `reply_read` or `reply_error`."""

    handle: int
    """The client's handle; pass it back in the reply."""
    offset: int
    """Byte offset in the export; offset + length is inside it."""
    length: int
    """Byte count, at most REQUEST_SIZE_MAX_BYTES; may be 0."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRequest(Event):
    """Write `data` at `offset`; answer with `reply_ok` or `reply_error`."""

    handle: int
    """The client's handle; pass it back in the reply."""
    offset: int
    """Byte offset in the export; offset + len(data) is inside it."""
    data: bytes
    """The bytes to write, at most REQUEST_SIZE_MAX_BYTES; may be empty."""
    fua: bool
    """Force unit access: the data must be durable (fdatasync) before the reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushRequest(Event):
    """Make every write answered so far durable; answer with `reply_ok` or `reply_error`."""

    handle: int
    """The client's handle; pass it back in the reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrimRequest(Event):
    """The client no longer needs this range; answer with `reply_ok` or `reply_error`."""

    handle: int
    """The client's handle; pass it back in the reply."""
    offset: int
    """Byte offset in the export; offset + length is inside it."""
    length: int
    """Byte count; not limited by REQUEST_SIZE_MAX_BYTES (there is no payload)."""
    fua: bool
    """Force unit access: the trim must be durable before the reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteZeroesRequest(Event):
    """Make this range read as zeroes; answer with `reply_ok` or `reply_error`."""

    handle: int
    """The client's handle; pass it back in the reply."""
    offset: int
    """Byte offset in the export; offset + length is inside it."""
    length: int
    """Byte count; not limited by REQUEST_SIZE_MAX_BYTES (there is no payload)."""
    fua: bool
    """Force unit access: the zeroes must be durable before the reply."""
    may_trim: bool
    """False when the client sent NO_HOLE: the range must stay allocated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected(Event):
    """The codec refused a request and already queued the error reply; log it, answer nothing."""

    handle: int
    """The client's handle."""
    command: str
    """The command's name, or "unknown(N)"."""
    error: NbdError
    """The error sent to the client."""
    message: str
    """Why, as nbdkit words it: "invalid request: WRITE: ...: offset=... count=..."."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls(Event):
    """The client asked for TLS and the ACK is queued: send it, then upgrade the socket to
    TLS (server side) before reading another byte, and call `tls_started` once that is done.
    Until then `next_event` returns NEED_DATA."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect(Event):
    """The client sent NBD_CMD_DISC: answer the requests in flight, then close."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The connection is over: send what `data_to_send` holds, then close the socket."""

    reason: str
    """What happened, for the log."""
    error: RemoteProtocolError | None = None
    """The client's protocol violation, or None for an ordinary end (ABORT, EOF, no export)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NbdStatistics:
    """A snapshot of one connection's counters."""

    state: NbdState
    """Where the connection is."""
    in_flight: int
    """Request events returned and not yet answered."""
    requests_total: int
    """Request events returned so far."""
    rejected_total: int
    """Requests the codec refused."""
    buffered_bytes: int
    """Received bytes not yet turned into events."""


@dataclass(frozen=True, slots=True)
class _Pending:
    command: _Command
    offset: int
    length: int


class _ReceiveBuffer:
    """Received bytes, read through a cursor that is committed or rolled back (wsproto)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._position = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def position(self) -> int:
        return self._position

    def feed(self, data: bytes) -> None:
        self._data += data

    def consume_exactly(self, size: int) -> bytes | None:
        end = self._position + size
        if end > len(self._data):
            return None
        with memoryview(self._data) as view, view[self._position : end] as part:
            chunk = part.tobytes()
        self._position = end
        return chunk

    def commit(self) -> None:
        del self._data[: self._position]
        self._position = 0

    def rollback(self) -> None:
        self._position = 0

    def discard_at_most(self, size: int) -> int:
        assert self._position == 0, "discard inside an uncommitted read"
        count = min(size, len(self._data))
        del self._data[:count]
        return count


class NbdServerConnection:
    """One client's NBD connection, server side, with no I/O of its own.

    The shell calls `receive_data` with what it read (b"" at EOF), then `next_event` until it
    returns NEED_DATA, and writes out `data_to_send()` after each batch. The greeting is
    queued at construction, so the first `data_to_send()` returns it.
    """

    def __init__(
        self,
        *,
        lookup: Callable[[str], ExportInfo | None],
        list_exports: Callable[[], Iterable[str]],
        default_export: str | None = None,
        tls: bool = False,
    ) -> None:
        """`tls`: the server requires TLS (proto.md's FORCEDTLS): STARTTLS is answered ACK
        and every other option but ABORT with ERR_TLS_REQD until `tls_started`; without it
        STARTTLS is refused with ERR_POLICY."""
        self._tls_required = tls
        self._tls_active = False
        self._tls_pending = False
        self._lookup = lookup
        self._list_exports = list_exports
        self._default_export = default_export
        self._state = NbdState.CLIENT_FLAGS
        self._buffer = _ReceiveBuffer()
        self._eof = False
        self._outbound: list[bytes] = []
        self._no_zeroes = False
        self._structured = False
        self._options_total = 0
        self._options_max = OPTIONS_MAX
        self._list_seen = False
        self._export: ExportInfo | None = None
        self._transmission_flags = 0
        self._discard_remaining = 0
        self._after_discard: Callable[[], Event | None] | None = None
        self._pending: dict[int, list[_Pending]] = {}
        self._in_flight = 0
        self._requests_total = 0
        self._rejected_total = 0
        self._send(_GREETING.pack(_NBDMAGIC, _IHAVEOPT, _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))

    def __repr__(self) -> str:
        name = self._export.name if self._export is not None else None
        return (
            f"<NbdServerConnection [{self._state.value}, export={name!r}, "
            f"in_flight={self._in_flight}, requests={self._requests_total}, "
            f"rejected={self._rejected_total}]>"
        )

    @property
    def state(self) -> NbdState:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    def tls_started(self) -> None:
        """The shell upgraded the socket after `StartTls`: options go on, now over TLS."""
        if not self._tls_pending:
            raise LocalProtocolError("nbd tls_started: no STARTTLS is waiting for its upgrade")
        self._tls_pending, self._tls_active = False, True

    def statistics(self) -> NbdStatistics:
        return NbdStatistics(
            state=self._state,
            in_flight=self._in_flight,
            requests_total=self._requests_total,
            rejected_total=self._rejected_total,
            buffered_bytes=len(self._buffer),
        )

    # Receiving...

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; b"" means EOF. Ignored once the connection is over."""
        if self._state in (NbdState.DISCONNECTED, NbdState.CLOSED):
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("nbd receive_data: data after EOF")
        if self._discard_remaining and not len(self._buffer):
            dropped = min(self._discard_remaining, len(data))
            self._discard_remaining -= dropped
            data = data[dropped:]
        self._buffer.feed(data)

    def next_event(self) -> Event | NeedData:
        """Return the next event, or NEED_DATA. Not to be called after a Disconnect or
        ConnectionClosed event."""
        if self._state in (NbdState.DISCONNECTED, NbdState.CLOSED):
            raise LocalProtocolError(
                f"nbd next_event: the connection is over: state={self._state.value}"
            )
        try:
            event = self._next_event()
        except RemoteProtocolError as exc:
            self._buffer.rollback()
            event = ConnectionClosed(reason=str(exc), error=exc)
        if isinstance(event, ConnectionClosed):
            self._state = NbdState.CLOSED
        self._invariants()
        return event

    def _next_event(self) -> Event | NeedData:
        if self._tls_pending:
            return NEED_DATA  # the shell upgrades the socket first
        while True:
            event: Event | NeedData | None
            if self._after_discard is not None:
                self._discard_remaining -= self._buffer.discard_at_most(self._discard_remaining)
                if self._discard_remaining:
                    return self._need_data()
                action, self._after_discard = self._after_discard, None
                event = action()
            elif self._state is NbdState.CLIENT_FLAGS:
                event = self._receive_client_flags()
            elif self._state is NbdState.OPTIONS:
                event = self._receive_option()
            else:
                event = self._receive_request()
            if event is NEED_DATA:
                self._buffer.rollback()
                return self._need_data()
            if event is not None:
                return event

    def _need_data(self) -> Event | NeedData:
        if not self._eof:
            return NEED_DATA
        if len(self._buffer) or self._discard_remaining:
            raise RemoteProtocolError(
                f"nbd {self._phase()}: connection closed in the middle of a message: "
                f"buffered_bytes={len(self._buffer)} missing_bytes={self._discard_remaining}"
            )
        if self._state is NbdState.TRANSMISSION:
            return ConnectionClosed(reason="nbd transmission: client closed without NBD_CMD_DISC")
        return ConnectionClosed(reason="nbd handshake: client closed during the handshake")

    def _phase(self) -> str:
        return "transmission" if self._state is NbdState.TRANSMISSION else "handshake"

    def _discard(self, size: int, then: Callable[[], Event | None]) -> None:
        # Drop the next `size` bytes as they arrive, then run `then`: a payload we refuse is
        # never buffered, however long the client says it is.
        self._discard_remaining = size
        self._after_discard = then

    # The handshake...

    def _receive_client_flags(self) -> Event | NeedData | None:
        raw = self._buffer.consume_exactly(_CLIENT_FLAGS.size)
        if raw is None:
            return NEED_DATA
        self._buffer.commit()
        (flags,) = _CLIENT_FLAGS.unpack(raw)
        if flags & ~(_FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES):
            raise RemoteProtocolError(f"nbd handshake: unknown client flags: flags=0x{flags:08x}")
        # A client without FIXED_NEWSTYLE is still served (proto.md: the server MAY honour
        # fixed newstyle anyway); such a client only ever sends EXPORT_NAME.
        self._no_zeroes = bool(flags & _FLAG_NO_ZEROES)
        self._state = NbdState.OPTIONS
        return None

    def _receive_option(self) -> Event | NeedData | None:
        raw = self._buffer.consume_exactly(_OPTION.size)
        if raw is None:
            return NEED_DATA
        magic, option, length = _OPTION.unpack(raw)
        if magic != _IHAVEOPT:
            raise RemoteProtocolError(f"nbd handshake: bad option magic: magic=0x{magic:016x}")
        if self._options_total >= self._options_max:
            raise RemoteProtocolError(f"nbd handshake: too many options: max={self._options_max}")
        if length > OPTION_SIZE_MAX_BYTES:
            if option == _Option.EXPORT_NAME:  # cannot be answered with an error
                raise RemoteProtocolError(
                    f"nbd handshake: EXPORT_NAME: option too long: length={length} "
                    f"max={OPTION_SIZE_MAX_BYTES}"
                )
            self._buffer.commit()
            self._options_total += 1
            message = f"option too long: length={length} max={OPTION_SIZE_MAX_BYTES}"
            self._discard(length, lambda: self._option_reply(option, _REP_ERR_TOO_BIG, message))
            return None
        data = self._buffer.consume_exactly(length)
        if data is None:
            return NEED_DATA
        self._buffer.commit()
        self._options_total += 1
        return self._option_received(option, data)

    def _option_received(self, option: int, data: bytes) -> Event | None:
        if self._tls_required and not self._tls_active:
            return self._option_before_tls(option, data)
        if option == _Option.EXPORT_NAME:
            return self._export_name_received(data)
        if option == _Option.ABORT:  # proto.md: ignore any data, reply ACK
            self._option_reply(option, _REP_ACK)
            return ConnectionClosed(reason="nbd handshake: client sent ABORT")
        if option in (_Option.INFO, _Option.GO):
            return self._info_received(option, data)
        if option == _Option.LIST and not data:
            self._list_received()
        elif option == _Option.STRUCTURED_REPLY and not data:
            self._structured = True  # a repeat is acknowledged again: it changes nothing
            self._option_reply(option, _REP_ACK)
        elif option == _Option.STARTTLS and not data and self._tls_active:
            self._option_reply(option, _REP_ERR_INVALID, "STARTTLS: TLS is already in use")
        elif option == _Option.STARTTLS and not data:
            # TLS is a matter of configuration (DESIGN.md section 6) and none is configured.
            self._option_reply(option, _REP_ERR_POLICY, "TLS is not enabled on this server")
        elif option in (_Option.LIST, _Option.STRUCTURED_REPLY, _Option.STARTTLS):
            self._option_reply(
                option,
                _REP_ERR_INVALID,
                f"{_Option(option).name} takes no data: length={len(data)}",
            )
        else:
            self._option_reply(
                option, _REP_ERR_UNSUP, f"option not supported: {_option_name(option)}"
            )
        return None

    def _option_before_tls(self, option: int, data: bytes) -> Event | None:
        """FORCEDTLS (proto.md): nothing but STARTTLS and ABORT before TLS."""
        if option == _Option.STARTTLS and not data:
            if len(self._buffer):  # the client must wait for our ACK before its TLS hello
                raise RemoteProtocolError(
                    f"nbd handshake: STARTTLS: data sent before the server's reply: "
                    f"buffered_bytes={len(self._buffer)}"
                )
            self._option_reply(option, _REP_ACK)
            self._tls_pending = True
            return StartTls()
        if option == _Option.ABORT:
            self._option_reply(option, _REP_ACK)
            return ConnectionClosed(reason="nbd handshake: client sent ABORT")
        if option == _Option.EXPORT_NAME:  # cannot be answered with an error
            raise RemoteProtocolError(
                "nbd handshake: EXPORT_NAME without TLS: this server requires TLS (STARTTLS first)"
            )
        self._option_reply(
            option,
            _REP_ERR_TLS_REQD,
            f"{_option_name(option)}: this server requires TLS: send STARTTLS first",
        )
        return None

    def _export_name_received(self, data: bytes) -> Event:
        # EXPORT_NAME cannot be answered with an error: a name we cannot use ends the session.
        name = _decode_string(data, "nbd handshake: EXPORT_NAME: export name")
        info = self._resolve(name)
        if info is None:
            return ConnectionClosed(
                reason=f"nbd handshake: EXPORT_NAME: no such export: name={_shown(name)}"
            )
        flags = self._flags_for(info)
        self._send(_EXPORT_NAME_REPLY.pack(info.size_bytes, flags))
        if not self._no_zeroes:
            self._send(_ZEROES)
        return self._export_chosen(name, info, flags)

    def _info_received(self, option: int, data: bytes) -> Event | None:
        verb = _Option(option).name
        try:
            name, requested = _parse_info(data)
        except RemoteProtocolError as exc:
            self._option_reply(option, _REP_ERR_INVALID, f"{verb}: {exc}")
            return None
        info = self._resolve(name)
        if info is None:
            self._option_reply(
                option, _REP_ERR_UNKNOWN, f"{verb}: no such export: name={_shown(name)}"
            )
            return None
        flags = self._flags_for(info)
        self._option_reply(
            option, _REP_INFO, _INFO_EXPORT.pack(_INFO_EXPORT_TYPE, info.size_bytes, flags)
        )
        if _INFO_NAME in requested:
            self._option_reply(option, _REP_INFO, _U16.pack(_INFO_NAME) + info.name.encode())
        if _INFO_DESCRIPTION in requested and info.description:
            description = _U16.pack(_INFO_DESCRIPTION) + info.description.encode()
            self._option_reply(option, _REP_INFO, description)
        # Sent whether asked or not: we enforce a maximum below the default "unlimited".
        block_size = _INFO_BLOCK_SIZE.pack(
            _INFO_BLOCK_SIZE_TYPE,
            BLOCK_SIZE_MIN_BYTES,
            BLOCK_SIZE_PREFERRED_BYTES,
            REQUEST_SIZE_MAX_BYTES,
        )
        self._option_reply(option, _REP_INFO, block_size)
        self._option_reply(option, _REP_ACK)
        if option == _Option.GO:
            return self._export_chosen(name, info, flags)
        return None

    def _list_received(self) -> None:
        names = list(self._list_exports())
        for name in names:
            encoded = _check_string(name, "list_exports() name")
            self._option_reply(_Option.LIST, _REP_SERVER, _U32.pack(len(encoded)) + encoded)
        self._option_reply(_Option.LIST, _REP_ACK)
        if not self._list_seen:
            self._list_seen = True
            self._options_max += OPTIONS_MAX * len(names)

    def _resolve(self, name: str) -> ExportInfo | None:
        if not name:
            if self._default_export is None:
                return None
            name = self._default_export
        info = self._lookup(name)
        if info is not None:
            _check_string(info.name, "ExportInfo.name")
            _check_string(info.description, "ExportInfo.description")
            if not 0 <= info.size_bytes < 2**64:
                raise LocalProtocolError(
                    f"nbd lookup: export size out of range: size_bytes={info.size_bytes}"
                )
        return info

    def _flags_for(self, info: ExportInfo) -> int:
        flags = _HAS_FLAGS
        if info.can_flush:
            flags |= _SEND_FLUSH
        if info.read_only:
            flags |= _READ_ONLY
        else:
            flags |= (
                (_SEND_FUA if info.can_fua else 0)
                | (_SEND_TRIM if info.can_trim else 0)
                | (_SEND_WRITE_ZEROES if info.can_zero else 0)
            )
        if self._structured:
            flags |= _SEND_DF
        if info.can_multi_conn:
            flags |= _CAN_MULTI_CONN
        return flags

    def _export_chosen(self, name: str, info: ExportInfo, flags: int) -> ExportChosen:
        self._export = info
        self._transmission_flags = flags
        self._state = NbdState.TRANSMISSION
        return ExportChosen(name=name, info=info)

    def _option_reply(self, option: int, reply: int, data: bytes | str = b"") -> None:
        payload = _encode_message(data) if isinstance(data, str) else data
        self._send(_OPTION_REPLY.pack(_OPTION_REPLY_MAGIC, option, reply, len(payload)), payload)

    # Transmission: receiving requests...

    def _receive_request(self) -> Event | NeedData | None:
        raw = self._buffer.consume_exactly(_REQUEST.size)
        if raw is None:
            return NEED_DATA
        magic, flags, command, handle, offset, length = _REQUEST.unpack(raw)
        if magic != _REQUEST_MAGIC:
            raise RemoteProtocolError(f"nbd transmission: bad request magic: magic=0x{magic:08x}")
        if command == _Command.DISC:  # offset, length and flags are not checked, as in nbdkit
            self._buffer.commit()
            self._state = NbdState.DISCONNECTED
            return Disconnect()
        refusal = self._validate(command, flags, offset, length)
        if refusal is not None:
            self._buffer.commit()
            error, message = refusal
            if command == _Command.WRITE and length:
                self._discard(length, lambda: self._reject(handle, command, error, message))
                return None
            return self._reject(handle, command, error, message)
        data = b""
        if command == _Command.WRITE:
            payload = self._buffer.consume_exactly(length)
            if payload is None:
                return NEED_DATA
            data = payload
        self._buffer.commit()
        kind = _Command(command)
        self._pending.setdefault(handle, []).append(_Pending(kind, offset, length))
        self._in_flight += 1
        self._requests_total += 1
        fua = bool(flags & _CMD_FLAG_FUA)
        if kind is _Command.READ:
            return ReadRequest(handle=handle, offset=offset, length=length)
        if kind is _Command.WRITE:
            return WriteRequest(handle=handle, offset=offset, data=data, fua=fua)
        if kind is _Command.FLUSH:
            return FlushRequest(handle=handle)
        if kind is _Command.TRIM:
            return TrimRequest(handle=handle, offset=offset, length=length, fua=fua)
        may_trim = not flags & _CMD_FLAG_NO_HOLE
        return WriteZeroesRequest(
            handle=handle, offset=offset, length=length, fua=fua, may_trim=may_trim
        )

    def _validate(
        self, command: int, flags: int, offset: int, length: int
    ) -> tuple[NbdError, str] | None:
        # Every check a request must pass before the shell sees it, in nbdkit's order. The
        # errno choices follow proto.md "Error values"; docs/nbd.md explains each.
        assert self._export is not None
        info, advertised = self._export, self._transmission_flags
        name = _command_name(command)
        if command not in _SERVED_COMMANDS:
            if command in _KNOWN_COMMANDS:
                return NbdError.EINVAL, f"invalid request: {name}: command not supported"
            return NbdError.EINVAL, f"invalid request: unknown command ({command}) ignored"
        if command in _WRITING_COMMANDS and info.read_only:
            return NbdError.EPERM, f"invalid request: {name}: write request on read-only export"
        if command == _Command.FLUSH:
            if offset or length:
                return NbdError.EINVAL, (
                    f"invalid request: {name}: expecting offset and count = 0: "
                    f"offset={offset} count={length}"
                )
        elif offset + length > info.size_bytes:
            error = (
                NbdError.ENOSPC
                if command in (_Command.WRITE, _Command.WRITE_ZEROES)
                else NbdError.EINVAL
            )
            return error, (
                f"invalid request: {name}: offset and count are out of range: "
                f"offset={offset} count={length}"
            )
        allowed = _CMD_FLAG_FUA if advertised & _SEND_FUA else 0
        if command == _Command.WRITE_ZEROES:
            allowed |= _CMD_FLAG_NO_HOLE
        if command == _Command.READ and self._structured:
            allowed |= _CMD_FLAG_DF
        if flags & ~allowed:
            return NbdError.EINVAL, (
                f"invalid request: {name}: flag not allowed: flags=0x{flags & ~allowed:x} "
                f"({_flag_names(flags & ~allowed)})"
            )
        if command in (_Command.READ, _Command.WRITE) and length > REQUEST_SIZE_MAX_BYTES:
            return NbdError.EINVAL, (
                f"invalid request: {name}: data request is too large: "
                f"count={length} max={REQUEST_SIZE_MAX_BYTES}"
            )
        needed = _COMMAND_NEEDS.get(command, 0)
        if advertised & needed != needed:
            return NbdError.EINVAL, f"invalid request: {name}: operation not supported"
        return None

    def _reject(self, handle: int, command: int, error: NbdError, message: str) -> RequestRejected:
        self._rejected_total += 1
        self._send_error(handle, error, message)
        return RequestRejected(
            handle=handle, command=_command_name(command), error=error, message=message
        )

    # Transmission: answering requests...

    def reply_read(self, handle: int, data: bytes) -> None:
        """Answer a ReadRequest with exactly its `length` bytes."""
        pending = self._peek_pending(handle, "reply_read")
        if pending.command is not _Command.READ:
            raise LocalProtocolError(
                f"nbd reply_read: not a READ: handle={handle} command={pending.command.name}"
            )
        if len(data) != pending.length:
            raise LocalProtocolError(
                f"nbd reply_read: wrong data length: handle={handle} "
                f"length={len(data)} expected={pending.length}"
            )
        self._pop_pending(handle)
        if not self._structured:
            self._send(_SIMPLE_REPLY.pack(_SIMPLE_REPLY_MAGIC, 0, handle), data)
        elif not data:  # an OFFSET_DATA chunk must carry at least one byte
            self._send(
                _STRUCTURED_REPLY.pack(
                    _STRUCTURED_REPLY_MAGIC, _REPLY_FLAG_DONE, _REPLY_TYPE_NONE, handle, 0
                )
            )
        else:
            header = _STRUCTURED_REPLY.pack(
                _STRUCTURED_REPLY_MAGIC,
                _REPLY_FLAG_DONE,
                _REPLY_TYPE_OFFSET_DATA,
                handle,
                _OFFSET.size + len(data),
            )
            self._send(header + _OFFSET.pack(pending.offset), data)

    def reply_ok(self, handle: int) -> None:
        """Answer a WriteRequest, FlushRequest, TrimRequest or WriteZeroesRequest: done."""
        pending = self._peek_pending(handle, "reply_ok")
        if pending.command is _Command.READ:
            raise LocalProtocolError(f"nbd reply_ok: a READ needs reply_read: handle={handle}")
        self._pop_pending(handle)
        self._send(_SIMPLE_REPLY.pack(_SIMPLE_REPLY_MAGIC, 0, handle))

    def reply_error(self, handle: int, error: NbdError | str | int, message: str = "") -> None:
        """Answer any request with an error: an NbdError, an errno name ("EROFS") or a system
        errno number; `message` reaches the user when structured replies are in use."""
        code = _nbd_error(error)
        self._peek_pending(handle, "reply_error")
        self._pop_pending(handle)
        self._send_error(handle, code, message or f"request failed: {code.name}")

    def _send_error(self, handle: int, error: NbdError, message: str) -> None:
        if not self._structured:
            self._send(_SIMPLE_REPLY.pack(_SIMPLE_REPLY_MAGIC, error, handle))
            return
        text = _encode_message(message)
        payload = _ERROR_CHUNK.pack(error, len(text)) + text
        header = _STRUCTURED_REPLY.pack(
            _STRUCTURED_REPLY_MAGIC, _REPLY_FLAG_DONE, _REPLY_TYPE_ERROR, handle, len(payload)
        )
        self._send(header + payload)

    def _peek_pending(self, handle: int, verb: str) -> _Pending:
        queue = self._pending.get(handle)
        if not queue:
            raise LocalProtocolError(f"nbd {verb}: no request in flight: handle={handle}")
        return queue[0]

    def _pop_pending(self, handle: int) -> None:
        # Handles the client reused while in flight are answered oldest first.
        queue = self._pending[handle]
        queue.pop(0)
        if not queue:
            del self._pending[handle]
        self._in_flight -= 1

    # Sending...

    def data_to_send(self) -> bytes:
        """Return and forget every byte queued for the client."""
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    def parts_to_send(self) -> list[bytes]:
        """Return and forget every byte queued for the client, as buffers to write in order
        (a transport's writelines): a read's data stays the buffer it was given (it is not
        copied into one with the rest), and the small pieces between are joined, so each
        buffer is at least a few KiB or a read's data (one TLS record or more each)."""
        parts: list[bytes] = []
        small: list[bytes] = []
        for part in self._outbound:
            if len(part) >= PART_SEPARATE_MIN_BYTES:
                if small:
                    parts.append(b"".join(small))
                    small.clear()
                parts.append(part)
            else:
                small.append(part)
        if small:
            parts.append(b"".join(small))
        self._outbound.clear()
        return parts

    def _send(self, *parts: bytes) -> None:
        self._outbound.extend(parts)

    def _invariants(self) -> None:
        assert self._buffer.position == 0, "a read was neither committed nor rolled back"
        assert self._discard_remaining >= 0
        assert self._discard_remaining == 0 or self._after_discard is not None
        assert 0 <= self._in_flight <= self._requests_total
        assert self._options_total <= self._options_max
        assert (self._export is not None) == (self._transmission_flags != 0)
        if self._state in (NbdState.TRANSMISSION, NbdState.DISCONNECTED):
            assert self._export is not None


# Helpers.


def _parse_info(data: bytes) -> tuple[str, frozenset[int]]:
    # INFO and GO: name length u32, name, count u16, count x information type u16.
    if len(data) < _U32.size + _U16.size:
        raise RemoteProtocolError(f"option data too short: length={len(data)}")
    (name_length,) = _U32.unpack_from(data)
    end = _U32.size + name_length
    if end + _U16.size > len(data):
        raise RemoteProtocolError(
            f"name length exceeds the option: name_length={name_length} length={len(data)}"
        )
    name = _decode_string(data[_U32.size : end], "export name")
    (count,) = _U16.unpack_from(data, end)
    requests = data[end + _U16.size :]
    if len(requests) != count * _U16.size:
        raise RemoteProtocolError(
            f"information requests do not match their count: count={count} bytes={len(requests)}"
        )
    return name, frozenset(item for (item,) in _U16.iter_unpack(requests))


def _decode_string(raw: bytes, what: str) -> str:
    if len(raw) > STRING_SIZE_MAX_BYTES:
        raise RemoteProtocolError(f"{what} too long: length={len(raw)} max={STRING_SIZE_MAX_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not UTF-8: name={raw[:64]!r}") from None
    if "\0" in text:
        raise RemoteProtocolError(f"{what} contains NUL: name={_shown(text)}")
    return text


def _check_string(text: str, what: str) -> bytes:
    encoded = text.encode()
    if len(encoded) > STRING_SIZE_MAX_BYTES or "\0" in text:
        raise LocalProtocolError(
            f"nbd: {what} cannot be sent: it must be at most {STRING_SIZE_MAX_BYTES} bytes "
            f"without NUL: value={_shown(text)}"
        )
    return encoded


def _encode_message(message: str) -> bytes:
    # A message is a string too: cut it to 4096 bytes on a character boundary.
    encoded = message.encode()[:STRING_SIZE_MAX_BYTES]
    return encoded.decode("utf-8", "ignore").encode()


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 64 else repr(name[:64]) + "..."


def _option_name(option: int) -> str:
    try:
        return f"{_Option(option).name} ({option})"
    except ValueError:
        return f"unknown ({option})"


def _command_name(command: int) -> str:
    try:
        return _Command(command).name
    except ValueError:
        return f"unknown({command})"


def _flag_names(flags: int) -> str:
    return "|".join(
        _CMD_FLAG_NAMES.get(bit, f"0x{bit:x}") for bit in (1 << i for i in range(16)) if flags & bit
    )


def _nbd_error(error: NbdError | str | int) -> NbdError:
    if isinstance(error, NbdError):
        return error
    name = error if isinstance(error, str) else errno_module.errorcode.get(error)
    if name is not None and name in _ERRNO_NAMES:
        return _ERRNO_NAMES[name]
    if name is not None and name in errno_module.errorcode.values():
        return NbdError.EINVAL
    raise LocalProtocolError(f"nbd reply_error: not an errno name or number: error={error!r}")
