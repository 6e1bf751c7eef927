"""The NBD server codec, byte for byte, without sockets.

Client bytes are built by hand from proto.md's layouts with constants written out here, so
the tests check the codec against the spec rather than against itself.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remcopy.errors import LocalProtocolError, RemoteProtocolError
from remcopy.errors import LocalProtocolError as _LocalProtocolError
from remcopy.wire.nbd import (
    NEED_DATA,
    OPTION_SIZE_MAX_BYTES,
    OPTIONS_MAX,
    PART_SEPARATE_MIN_BYTES,
    REQUEST_SIZE_MAX_BYTES,
    ConnectionClosed,
    Disconnect,
    Event,
    ExportChosen,
    ExportInfo,
    FlushRequest,
    NbdError,
    NbdServerConnection,
    NbdState,
    ReadRequest,
    RequestRejected,
    StartTls,
    TrimRequest,
    WriteRequest,
    WriteZeroesRequest,
)

# Constants from proto.md, written out independently of the codec.
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

C_FIXED_NEWSTYLE = 1
C_NO_ZEROES = 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 6, 7, 8, 10

REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO = 1, 2, 4, 16

REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_ERROR = 0, 1, 2**15 + 1

EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28

MiB = 1024 * 1024
SIZE = 1 * MiB

EXPORTS = {
    "PAY001": ExportInfo(name="PAY001", size_bytes=SIZE, description="payroll primary"),
    "RO0001": ExportInfo(name="RO0001", size_bytes=SIZE, read_only=True),
    "TRIM01": ExportInfo(name="TRIM01", size_bytes=SIZE, can_trim=True, can_multi_conn=True),
    "BARE01": ExportInfo(
        name="BARE01", size_bytes=SIZE, can_flush=False, can_fua=False, can_zero=False
    ),
    "BIG001": ExportInfo(name="BIG001", size_bytes=1024 * MiB),
}
DEFAULT_FLAGS = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES


# Building client bytes and reading server bytes.


def option(number: int, data: bytes = b"") -> bytes:
    return struct.pack("!QII", IHAVEOPT, number, len(data)) + data


def info_data(name: str, *requests: int) -> bytes:
    encoded = name.encode()
    return (
        struct.pack("!I", len(encoded))
        + encoded
        + struct.pack(f"!H{len(requests)}H", len(requests), *requests)
    )


def request(
    command: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0, data: bytes = b""
) -> bytes:
    return struct.pack("!IHHQQI", REQUEST_MAGIC, flags, command, handle, offset, length) + data


def write(handle: int, offset: int, data: bytes, flags: int = 0) -> bytes:
    return request(CMD_WRITE, handle, offset, len(data), flags, data)


def option_reply(number: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack("!QIII", OPTION_REPLY_MAGIC, number, reply, len(data)) + data


def simple_reply(handle: int, error: int = 0, data: bytes = b"") -> bytes:
    return struct.pack("!IIQ", SIMPLE_REPLY_MAGIC, error, handle) + data


def structured_reply(handle: int, kind: int, payload: bytes = b"") -> bytes:
    header = struct.pack(
        "!IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, kind, handle, len(payload)
    )
    return header + payload


def block_size_info() -> bytes:
    return struct.pack("!HIII", INFO_BLOCK_SIZE, 1, 4096, 32 * MiB)


def parse_option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    replies = []
    while data:
        magic, number, reply, length = struct.unpack_from("!QIII", data)
        assert magic == OPTION_REPLY_MAGIC
        replies.append((number, reply, data[20 : 20 + length]))
        data = data[20 + length :]
    return replies


def error_message(payload: bytes) -> tuple[int, str]:
    error, length = struct.unpack_from("!IH", payload)
    assert length == len(payload) - 6
    return error, payload[6:].decode()


# Driving the codec.


def lookup(name: str) -> ExportInfo | None:
    return EXPORTS.get(name)


def new_connection(default_export: str | None = "PAY001") -> NbdServerConnection:
    conn = NbdServerConnection(
        lookup=lookup, list_exports=lambda: list(EXPORTS), default_export=default_export
    )
    conn.data_to_send()
    return conn


def drain(conn: NbdServerConnection) -> list[Event]:
    """Return every event up to NEED_DATA or the final event; bounded."""
    events: list[Event] = []
    for _ in range(100_000):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, (Disconnect, ConnectionClosed)):
            return events
    raise AssertionError("next_event did not settle")


def feed(conn: NbdServerConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def negotiated(
    name: str = "PAY001", *, structured: bool = False, client_flags: int = 3
) -> NbdServerConnection:
    conn = new_connection()
    data = struct.pack("!I", client_flags)
    if structured:
        data += option(OPT_STRUCTURED_REPLY)
    data += option(OPT_GO, info_data(name))
    assert feed(conn, data) == [ExportChosen(name=name, info=EXPORTS[name])]
    conn.data_to_send()
    return conn


def options_session(*options: bytes) -> tuple[list[Event], bytes]:
    conn = new_connection()
    events = feed(conn, struct.pack("!I", 3) + b"".join(options))
    return events, conn.data_to_send()


def closed_by_peer(events: list[Event]) -> RemoteProtocolError:
    assert len(events) >= 1
    last = events[-1]
    assert isinstance(last, ConnectionClosed)
    assert last.error is not None
    assert last.reason == str(last.error)
    return last.error


# The handshake.


def test_NbdServerConnection_greeting() -> None:
    """The greeting is queued at construction: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES."""
    conn = NbdServerConnection(lookup=lookup, list_exports=list)
    assert conn.data_to_send() == struct.pack("!QQH", NBDMAGIC, IHAVEOPT, 3)
    assert conn.data_to_send() == b""
    assert conn.state is NbdState.CLIENT_FLAGS
    assert conn.next_event() is NEED_DATA


def test_NbdServerConnection_unknown_client_flags_close() -> None:
    """A client flag the server did not advertise drops the connection, as proto.md demands."""
    conn = new_connection()
    error = closed_by_peer(feed(conn, struct.pack("!I", 4)))
    assert str(error) == "nbd handshake: unknown client flags: flags=0x00000004"
    assert conn.state is NbdState.CLOSED


OPTION_CASES = [
    pytest.param(
        option(OPT_LIST),
        [
            (OPT_LIST, REP_SERVER, struct.pack("!I", 6) + name.encode())
            for name in ("PAY001", "RO0001", "TRIM01", "BARE01", "BIG001")
        ]
        + [(OPT_LIST, REP_ACK, b"")],
        id="LIST",
    ),
    pytest.param(
        option(OPT_STRUCTURED_REPLY), [(OPT_STRUCTURED_REPLY, REP_ACK, b"")], id="STRUCTURED"
    ),
    pytest.param(
        option(OPT_INFO, info_data("PAY001")),
        [
            (OPT_INFO, REP_INFO, struct.pack("!HQH", INFO_EXPORT, SIZE, DEFAULT_FLAGS)),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO",
    ),
    pytest.param(
        option(OPT_INFO, info_data("PAY001", INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77)),
        [
            (OPT_INFO, REP_INFO, struct.pack("!HQH", INFO_EXPORT, SIZE, DEFAULT_FLAGS)),
            (OPT_INFO, REP_INFO, struct.pack("!H", INFO_NAME) + b"PAY001"),
            (OPT_INFO, REP_INFO, struct.pack("!H", INFO_DESCRIPTION) + b"payroll primary"),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO-with-requests",
    ),
    pytest.param(
        option(OPT_INFO, info_data("RO0001", INFO_DESCRIPTION)),
        [
            (
                OPT_INFO,
                REP_INFO,
                struct.pack(
                    "!HQH", INFO_EXPORT, SIZE, FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_READ_ONLY
                ),
            ),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO-read-only-no-description",
    ),
    pytest.param(
        option(OPT_INFO, info_data("TRIM01")),
        [
            (
                OPT_INFO,
                REP_INFO,
                struct.pack(
                    "!HQH",
                    INFO_EXPORT,
                    SIZE,
                    DEFAULT_FLAGS | FLAG_SEND_TRIM | FLAG_CAN_MULTI_CONN,
                ),
            ),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO-trim-multi-conn",
    ),
    pytest.param(
        option(OPT_INFO, info_data("BARE01")),
        [
            (OPT_INFO, REP_INFO, struct.pack("!HQH", INFO_EXPORT, SIZE, FLAG_HAS_FLAGS)),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO-bare",
    ),
    pytest.param(
        option(OPT_INFO, info_data("")),
        [
            (OPT_INFO, REP_INFO, struct.pack("!HQH", INFO_EXPORT, SIZE, DEFAULT_FLAGS)),
            (OPT_INFO, REP_INFO, block_size_info()),
            (OPT_INFO, REP_ACK, b""),
        ],
        id="INFO-default-export",
    ),
]


@pytest.mark.parametrize(("client_bytes", "expected"), OPTION_CASES)
def test_NbdServerConnection_option_answers(
    client_bytes: bytes, expected: list[tuple[int, int, bytes]]
) -> None:
    """Each option is answered with the replies proto.md prescribes, and no event."""
    events, server_bytes = options_session(client_bytes)
    assert events == []
    assert parse_option_replies(server_bytes) == expected
    assert server_bytes == b"".join(option_reply(*reply) for reply in expected)


ERROR_CASES = [
    pytest.param(option(OPT_LIST, b"x"), OPT_LIST, REP_ERR_INVALID, "LIST takes no data: length=1"),
    pytest.param(
        option(OPT_STRUCTURED_REPLY, b"xy"),
        OPT_STRUCTURED_REPLY,
        REP_ERR_INVALID,
        "STRUCTURED_REPLY takes no data: length=2",
    ),
    pytest.param(
        option(OPT_STARTTLS), OPT_STARTTLS, REP_ERR_POLICY, "TLS is not enabled on this server"
    ),
    pytest.param(
        option(OPT_STARTTLS, b"z"), OPT_STARTTLS, REP_ERR_INVALID, "STARTTLS takes no data"
    ),
    pytest.param(option(99), 99, REP_ERR_UNSUP, "option not supported: unknown (99)"),
    pytest.param(
        option(OPT_SET_META_CONTEXT, b"\0" * 8),
        OPT_SET_META_CONTEXT,
        REP_ERR_UNSUP,
        "option not supported: SET_META_CONTEXT (10)",
    ),
    pytest.param(
        option(OPT_INFO, info_data("NOSUCH")),
        OPT_INFO,
        REP_ERR_UNKNOWN,
        "INFO: no such export: name='NOSUCH'",
    ),
    pytest.param(
        option(OPT_GO, info_data("X" * 100)),
        OPT_GO,
        REP_ERR_UNKNOWN,
        "GO: no such export: name='" + "X" * 64 + "'...",
    ),
    pytest.param(
        option(OPT_GO, b"\0\0\0"), OPT_GO, REP_ERR_INVALID, "GO: option data too short: length=3"
    ),
    pytest.param(
        option(OPT_GO, struct.pack("!IH", 5, 0)),
        OPT_GO,
        REP_ERR_INVALID,
        "GO: name length exceeds the option: name_length=5 length=6",
    ),
    pytest.param(
        option(OPT_GO, info_data("PAY001") + b"\0"),
        OPT_GO,
        REP_ERR_INVALID,
        "GO: information requests do not match their count: count=0 bytes=1",
    ),
    pytest.param(
        option(OPT_INFO, struct.pack("!I", 2) + b"\xff\xfe" + struct.pack("!H", 0)),
        OPT_INFO,
        REP_ERR_INVALID,
        "INFO: export name is not UTF-8",
    ),
    pytest.param(
        option(OPT_INFO, info_data("PA\0Y")),
        OPT_INFO,
        REP_ERR_INVALID,
        "INFO: export name contains NUL",
    ),
    pytest.param(
        option(OPT_INFO, info_data("N" * 4097)),
        OPT_INFO,
        REP_ERR_INVALID,
        "INFO: export name too long: length=4097 max=4096",
    ),
]


@pytest.mark.parametrize(("client_bytes", "number", "reply", "message"), ERROR_CASES)
def test_NbdServerConnection_option_errors(
    client_bytes: bytes, number: int, reply: int, message: str
) -> None:
    """A bad, unknown or refused option gets one error reply with a message, never a hang-up."""
    events, server_bytes = options_session(client_bytes, option(OPT_LIST))
    assert events == []
    replies = parse_option_replies(server_bytes)
    assert replies[0][:2] == (number, reply)
    assert replies[0][2].decode().startswith(message)
    assert replies[-1] == (OPT_LIST, REP_ACK, b""), "the next option is still served"


def test_NbdServerConnection_default_export_missing() -> None:
    """With no default export, the empty name is unknown to INFO and GO."""
    conn = new_connection(default_export=None)
    assert feed(conn, struct.pack("!I", 3) + option(OPT_GO, info_data(""))) == []
    [(number, reply, _)] = parse_option_replies(conn.data_to_send())
    assert (number, reply) == (OPT_GO, REP_ERR_UNKNOWN)
    assert conn.state is NbdState.OPTIONS


def test_NbdServerConnection_go_enters_transmission() -> None:
    """GO answers like INFO, ends with ACK and no zero padding, and reports ExportChosen."""
    conn = new_connection()
    client = struct.pack("!I", 1) + option(OPT_GO, info_data("", INFO_NAME))
    assert feed(conn, client) == [ExportChosen(name="", info=EXPORTS["PAY001"])]
    assert conn.data_to_send() == b"".join(
        [
            option_reply(OPT_GO, REP_INFO, struct.pack("!HQH", INFO_EXPORT, SIZE, DEFAULT_FLAGS)),
            option_reply(OPT_GO, REP_INFO, struct.pack("!H", INFO_NAME) + b"PAY001"),
            option_reply(OPT_GO, REP_INFO, block_size_info()),
            option_reply(OPT_GO, REP_ACK),
        ]
    )
    assert conn.state is NbdState.TRANSMISSION


def test_NbdServerConnection_go_after_structured_reply_advertises_df() -> None:
    """Once structured replies are negotiated, the transmission flags carry SEND_DF."""
    _, server_bytes = options_session(option(OPT_STRUCTURED_REPLY), option(OPT_INFO, info_data("")))
    replies = parse_option_replies(server_bytes)
    assert replies[1] == (
        OPT_INFO,
        REP_INFO,
        struct.pack("!HQH", INFO_EXPORT, SIZE, DEFAULT_FLAGS | FLAG_SEND_DF),
    )


@pytest.mark.parametrize(
    ("client_flags", "expected"),
    [
        pytest.param(C_FIXED_NEWSTYLE | C_NO_ZEROES, struct.pack("!QH", SIZE, DEFAULT_FLAGS)),
        pytest.param(
            C_FIXED_NEWSTYLE, struct.pack("!QH", SIZE, DEFAULT_FLAGS) + bytes(124), id="zeroes"
        ),
        pytest.param(0, struct.pack("!QH", SIZE, DEFAULT_FLAGS) + bytes(124), id="old-newstyle"),
    ],
)
def test_NbdServerConnection_export_name(client_flags: int, expected: bytes) -> None:
    """EXPORT_NAME answers size and flags, with the 124 zeroes unless NO_ZEROES was agreed."""
    conn = new_connection()
    events = feed(conn, struct.pack("!I", client_flags) + option(OPT_EXPORT_NAME, b"PAY001"))
    assert events == [ExportChosen(name="PAY001", info=EXPORTS["PAY001"])]
    assert conn.data_to_send() == expected


def test_NbdServerConnection_export_name_unknown_closes() -> None:
    """EXPORT_NAME of an unknown export cannot be errored, so the session ends without reply."""
    events, server_bytes = options_session(option(OPT_EXPORT_NAME, b"NOSUCH"))
    assert events == [
        ConnectionClosed(reason="nbd handshake: EXPORT_NAME: no such export: name='NOSUCH'")
    ]
    assert server_bytes == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\xff", "nbd handshake: EXPORT_NAME: export name is not UTF-8", id="utf8"),
        pytest.param(
            b"x" * (OPTION_SIZE_MAX_BYTES + 1),
            "nbd handshake: EXPORT_NAME: option too long: length=65537 max=65536",
            id="too-long",
        ),
    ],
)
def test_NbdServerConnection_export_name_invalid_closes(data: bytes, message: str) -> None:
    """EXPORT_NAME with a name that is not a valid string ends the session as a violation."""
    events, server_bytes = options_session(option(OPT_EXPORT_NAME, data))
    assert str(closed_by_peer(events)).startswith(message)
    assert server_bytes == b""


def test_NbdServerConnection_abort() -> None:
    """ABORT is acknowledged, its data ignored, and the connection ends without error."""
    events, server_bytes = options_session(option(OPT_ABORT, b"ignored"), option(OPT_LIST))
    assert events == [ConnectionClosed(reason="nbd handshake: client sent ABORT")]
    assert server_bytes == option_reply(OPT_ABORT, REP_ACK)


def test_NbdServerConnection_bad_option_magic_closes() -> None:
    """An option without IHAVEOPT is a violation that drops the connection."""
    events, _ = options_session(struct.pack("!QII", 0x1122334455667788, OPT_LIST, 0))
    assert str(closed_by_peer(events)) == (
        "nbd handshake: bad option magic: magic=0x1122334455667788"
    )


def test_NbdServerConnection_too_many_options_close() -> None:
    """The thirty-third option drops the connection; the first LIST raises the budget."""
    events, server_bytes = options_session(*[option(99)] * (OPTIONS_MAX + 1))
    assert str(closed_by_peer(events)) == "nbd handshake: too many options: max=32"
    assert len(parse_option_replies(server_bytes)) == OPTIONS_MAX

    budget = OPTIONS_MAX + OPTIONS_MAX * len(EXPORTS)
    events, _ = options_session(option(OPT_LIST), option(OPT_LIST), *[option(99)] * (budget - 2))
    assert events == []
    events, _ = options_session(option(OPT_LIST), *[option(99)] * budget)
    assert str(closed_by_peer(events)) == f"nbd handshake: too many options: max={budget}"


def test_NbdServerConnection_oversized_option_is_discarded() -> None:
    """An option over OPTION_SIZE_MAX_BYTES is dropped as it streams in, then refused TOO_BIG."""
    conn = new_connection()
    length = 70_000
    assert (
        feed(conn, struct.pack("!I", 3) + option(OPT_INFO)[:-4] + struct.pack("!I", length)) == []
    )
    for _ in range(length // 1000 - 1):
        assert feed(conn, b"\xee" * 1000) == []
        assert conn.statistics().buffered_bytes == 0
        assert conn.data_to_send() == b""
    assert feed(conn, b"\xee" * 1000 + option(OPT_STRUCTURED_REPLY)) == []
    [(number, reply, message), ack] = parse_option_replies(conn.data_to_send())
    assert (number, reply) == (OPT_INFO, REP_ERR_TOO_BIG)
    assert message == b"option too long: length=70000 max=65536"
    assert ack == (OPT_STRUCTURED_REPLY, REP_ACK, b"")


def test_NbdServerConnection_eof_during_handshake() -> None:
    """EOF between messages ends the handshake quietly; EOF inside one is a violation."""
    conn = new_connection()
    assert feed(conn, b"") == [
        ConnectionClosed(reason="nbd handshake: client closed during the handshake")
    ]
    conn = new_connection()
    assert feed(conn, struct.pack("!I", 3) + option(OPT_LIST)[:-1]) == []
    assert str(closed_by_peer(feed(conn, b""))) == (
        "nbd handshake: connection closed in the middle of a message: "
        "buffered_bytes=15 missing_bytes=0"
    )


# Transmission.


@pytest.mark.parametrize("structured", [False, True])
def test_parts_to_send_keeps_read_data_as_given_and_joins_the_small_pieces(
    structured: bool,
) -> None:
    """The same bytes as data_to_send, in order; a large read's data is the very buffer
    given (not copied); the small replies and headers around it are joined."""
    big = bytes(range(256)) * (PART_SEPARATE_MIN_BYTES // 256)
    sent = []
    for take in (NbdServerConnection.data_to_send, NbdServerConnection.parts_to_send):
        conn = negotiated(structured=structured)
        client = request(CMD_READ, 1, 0, len(big)) + write(2, 0, b"x") + request(CMD_READ, 3, 0, 4)
        feed(conn, client + request(CMD_READ, 4, 0, len(big)))
        conn.reply_read(1, big)
        conn.reply_ok(2)
        conn.reply_read(3, b"abcd")
        conn.reply_read(4, big)
        sent.append(take(conn))
    whole, parts = sent
    assert isinstance(parts, list) and b"".join(parts) == whole
    assert [p is big for p in parts] == [False, True, False, True]
    assert all(len(p) < 100 for p in parts if p is not big)


def test_NbdServerConnection_full_session() -> None:
    """GO, then read, write, flush, trim, write-zeroes and disconnect, byte for byte."""
    conn = negotiated("TRIM01")
    client = b"".join(
        [
            request(CMD_READ, 1, 4096, 8),
            write(2, 8192, b"abcd", flags=CMD_FLAG_FUA),
            request(CMD_FLUSH, 3),
            request(CMD_TRIM, 4, 0, 512, flags=CMD_FLAG_FUA),
            request(CMD_WRITE_ZEROES, 5, 512, 512),
            request(CMD_WRITE_ZEROES, 6, 1024, 512, flags=CMD_FLAG_NO_HOLE | CMD_FLAG_FUA),
            request(CMD_DISC, 7),
            b"after disconnect: ignored",
        ]
    )
    events = feed(conn, client)
    assert events == [
        ReadRequest(handle=1, offset=4096, length=8),
        WriteRequest(handle=2, offset=8192, data=b"abcd", fua=True),
        FlushRequest(handle=3),
        TrimRequest(handle=4, offset=0, length=512, fua=True),
        WriteZeroesRequest(handle=5, offset=512, length=512, fua=False, may_trim=True),
        WriteZeroesRequest(handle=6, offset=1024, length=512, fua=True, may_trim=False),
        Disconnect(),
    ]
    assert conn.statistics().in_flight == 6
    conn.reply_ok(6)
    conn.reply_ok(2)
    conn.reply_read(1, b"01234567")
    conn.reply_ok(3)
    conn.reply_error(4, "EIO")
    conn.reply_error(5, NbdError.ENOSPC, "volume full")
    assert conn.data_to_send() == b"".join(
        [
            simple_reply(6),
            simple_reply(2),
            simple_reply(1, data=b"01234567"),
            simple_reply(3),
            simple_reply(4, EIO),
            simple_reply(5, ENOSPC),
        ]
    )
    assert conn.state is NbdState.DISCONNECTED
    assert conn.statistics().in_flight == 0
    conn.receive_data(b"more bytes after DISC are ignored")
    with pytest.raises(LocalProtocolError, match="the connection is over: state=DISCONNECTED"):
        conn.next_event()


# The other direction: (structured replies?, request, the shell's answer, server bytes).
REPLY_CASES = [
    pytest.param(
        False,
        request(CMD_READ, 1, 8, 4),
        lambda conn: conn.reply_read(1, b"abcd"),
        simple_reply(1, data=b"abcd"),
        id="read",
    ),
    pytest.param(
        True,
        request(CMD_READ, 1, 8, 4),
        lambda conn: conn.reply_read(1, b"abcd"),
        structured_reply(1, REPLY_TYPE_OFFSET_DATA, struct.pack("!Q", 8) + b"abcd"),
        id="read-structured",
    ),
    pytest.param(
        False,
        request(CMD_READ, 1, 8, 4),
        lambda conn: conn.reply_error(1, "EIO", "bad sector"),
        simple_reply(1, EIO),
        id="read-error",
    ),
    pytest.param(
        True,
        request(CMD_READ, 1, 8, 4),
        lambda conn: conn.reply_error(1, "EIO", "bad sector"),
        structured_reply(1, REPLY_TYPE_ERROR, struct.pack("!IH", EIO, 10) + b"bad sector"),
        id="read-error-structured",
    ),
    pytest.param(
        False, write(2, 0, b"xy"), lambda conn: conn.reply_ok(2), simple_reply(2), id="write"
    ),
    pytest.param(
        True,
        write(2, 0, b"xy"),
        lambda conn: conn.reply_ok(2),
        simple_reply(2),
        id="write-structured",
    ),
    pytest.param(
        False,
        request(CMD_FLUSH, 3),
        lambda conn: conn.reply_error(3, "ESHUTDOWN"),
        simple_reply(3, 108),
        id="flush-error",
    ),
]


@pytest.mark.parametrize(("structured", "client_bytes", "answer", "expected"), REPLY_CASES)
def test_NbdServerConnection_reply_bytes(
    structured: bool,
    client_bytes: bytes,
    answer: Callable[[NbdServerConnection], None],
    expected: bytes,
) -> None:
    """Each way the shell answers a request encodes to the reply proto.md defines."""
    conn = negotiated(structured=structured)
    assert len(feed(conn, client_bytes)) == 1
    answer(conn)
    assert conn.data_to_send() == expected
    assert conn.statistics().in_flight == 0


def test_NbdServerConnection_structured_replies() -> None:
    """With structured replies, reads answer OFFSET_DATA (or NONE when empty), errors an ERROR
    chunk with the message, and other successes a simple reply."""
    conn = negotiated(structured=True)
    client = b"".join(
        [
            request(CMD_READ, 1, 100, 3, flags=CMD_FLAG_DF),
            request(CMD_READ, 2, 100, 0),
            request(CMD_READ, 3, 0, 16),
            write(4, 0, b"x"),
            write(5, 0, b"y"),
        ]
    )
    assert [type(event) for event in feed(conn, client)] == [ReadRequest] * 3 + [WriteRequest] * 2
    conn.reply_read(1, b"abc")
    conn.reply_read(2, b"")
    conn.reply_error(3, errno.EIO, "disk on fire")
    conn.reply_ok(4)
    conn.reply_error(5, "EROFS")
    error_payload = struct.pack("!IH", EIO, 12) + b"disk on fire"
    default_payload = struct.pack("!IH", EPERM, 21) + b"request failed: EPERM"
    assert conn.data_to_send() == b"".join(
        [
            structured_reply(1, REPLY_TYPE_OFFSET_DATA, struct.pack("!Q", 100) + b"abc"),
            structured_reply(2, REPLY_TYPE_NONE),
            structured_reply(3, REPLY_TYPE_ERROR, error_payload),
            simple_reply(4),
            structured_reply(5, REPLY_TYPE_ERROR, default_payload),
        ]
    )


def test_NbdServerConnection_structured_rejection_carries_message() -> None:
    """A request the codec refuses under structured replies gets an ERROR chunk with the text."""
    conn = negotiated(structured=True)
    [event] = feed(conn, request(CMD_READ, 9, SIZE, 1))
    message = f"invalid request: READ: offset and count are out of range: offset={SIZE} count=1"
    assert event == RequestRejected(
        handle=9, command="READ", error=NbdError.EINVAL, message=message
    )
    payload = struct.pack("!IH", EINVAL, len(message)) + message.encode()
    assert conn.data_to_send() == structured_reply(9, REPLY_TYPE_ERROR, payload)


def test_NbdServerConnection_boundaries() -> None:
    """The last byte and an empty request at the very end are inside the export."""
    conn = negotiated()
    events = feed(
        conn,
        request(CMD_READ, 1, SIZE - 1, 1)
        + write(2, SIZE - 1, b"z")
        + request(CMD_READ, 3, SIZE, 0)
        + request(CMD_WRITE_ZEROES, 4, 0, SIZE),
    )
    assert events == [
        ReadRequest(handle=1, offset=SIZE - 1, length=1),
        WriteRequest(handle=2, offset=SIZE - 1, data=b"z", fua=False),
        ReadRequest(handle=3, offset=SIZE, length=0),
        WriteZeroesRequest(handle=4, offset=0, length=SIZE, fua=False, may_trim=True),
    ]
    conn.reply_read(3, b"")
    assert conn.data_to_send() == simple_reply(3)


def test_NbdServerConnection_largest_requests() -> None:
    """READ and WRITE of exactly REQUEST_SIZE_MAX_BYTES are served; zeroes are not limited."""
    conn = negotiated("BIG001")
    data = bytes(REQUEST_SIZE_MAX_BYTES)
    events = feed(
        conn,
        request(CMD_READ, 1, 0, REQUEST_SIZE_MAX_BYTES)
        + write(2, 0, data)
        + request(CMD_WRITE_ZEROES, 3, 0, 1024 * MiB),
    )
    assert events == [
        ReadRequest(handle=1, offset=0, length=REQUEST_SIZE_MAX_BYTES),
        WriteRequest(handle=2, offset=0, data=data, fua=False),
        WriteZeroesRequest(handle=3, offset=0, length=1024 * MiB, fua=False, may_trim=True),
    ]


# Every validation error: (export, structured, request bytes, errno, message).
REJECTIONS = [
    pytest.param(
        "PAY001",
        request(99, 7),
        EINVAL,
        "unknown(99)",
        "invalid request: unknown command (99) ignored",
        id="unknown-command",
    ),
    pytest.param(
        "PAY001",
        request(CMD_CACHE, 7, 0, 512),
        EINVAL,
        "CACHE",
        "invalid request: CACHE: command not supported",
        id="cache",
    ),
    pytest.param(
        "PAY001",
        request(CMD_BLOCK_STATUS, 7, 0, 512),
        EINVAL,
        "BLOCK_STATUS",
        "invalid request: BLOCK_STATUS: command not supported",
        id="block-status",
    ),
    pytest.param(
        "RO0001",
        write(7, 0, b"abc"),
        EPERM,
        "WRITE",
        "invalid request: WRITE: write request on read-only export",
        id="write-read-only",
    ),
    pytest.param(
        "RO0001",
        request(CMD_TRIM, 7, 0, 512),
        EPERM,
        "TRIM",
        "invalid request: TRIM: write request on read-only export",
        id="trim-read-only",
    ),
    pytest.param(
        "RO0001",
        request(CMD_WRITE_ZEROES, 7, SIZE, 512),
        EPERM,
        "WRITE_ZEROES",
        "invalid request: WRITE_ZEROES: write request on read-only export",
        id="zeroes-read-only",
    ),
    pytest.param(
        "PAY001",
        request(CMD_READ, 7, SIZE - 511, 512),
        EINVAL,
        "READ",
        f"invalid request: READ: offset and count are out of range: offset={SIZE - 511} count=512",
        id="read-past-end",
    ),
    pytest.param(
        "PAY001",
        write(7, SIZE, b"x"),
        ENOSPC,
        "WRITE",
        f"invalid request: WRITE: offset and count are out of range: offset={SIZE} count=1",
        id="write-past-end",
    ),
    pytest.param(
        "PAY001",
        request(CMD_WRITE_ZEROES, 7, 2**64 - 1, 1),
        ENOSPC,
        "WRITE_ZEROES",
        "invalid request: WRITE_ZEROES: offset and count are out of range: "
        f"offset={2**64 - 1} count=1",
        id="zeroes-past-end",
    ),
    pytest.param(
        "TRIM01",
        request(CMD_TRIM, 7, 0, SIZE + 1),
        EINVAL,
        "TRIM",
        f"invalid request: TRIM: offset and count are out of range: offset=0 count={SIZE + 1}",
        id="trim-past-end",
    ),
    pytest.param(
        "PAY001",
        request(CMD_FLUSH, 7, 0, 1),
        EINVAL,
        "FLUSH",
        "invalid request: FLUSH: expecting offset and count = 0: offset=0 count=1",
        id="flush-with-count",
    ),
    pytest.param(
        "PAY001",
        write(7, 0, b"abc", flags=CMD_FLAG_NO_HOLE),
        EINVAL,
        "WRITE",
        "invalid request: WRITE: flag not allowed: flags=0x2 (NO_HOLE)",
        id="no-hole-on-write",
    ),
    pytest.param(
        "PAY001",
        request(CMD_READ, 7, 0, 1, flags=CMD_FLAG_DF),
        EINVAL,
        "READ",
        "invalid request: READ: flag not allowed: flags=0x4 (DF)",
        id="df-without-structured",
    ),
    pytest.param(
        "PAY001",
        request(CMD_WRITE_ZEROES, 7, 0, 1, flags=CMD_FLAG_FAST_ZERO | 0x8000),
        EINVAL,
        "WRITE_ZEROES",
        "invalid request: WRITE_ZEROES: flag not allowed: flags=0x8010 (0x10|0x8000)",
        id="unknown-flags",
    ),
    pytest.param(
        "BARE01",
        request(CMD_READ, 7, 0, 1, flags=CMD_FLAG_FUA),
        EINVAL,
        "READ",
        "invalid request: READ: flag not allowed: flags=0x1 (FUA)",
        id="fua-not-advertised",
    ),
    pytest.param(
        "RO0001",
        request(CMD_READ, 7, 0, 1, flags=CMD_FLAG_FUA),
        EINVAL,
        "READ",
        "invalid request: READ: flag not allowed: flags=0x1 (FUA)",
        id="fua-read-only",
    ),
    pytest.param(
        "BIG001",
        request(CMD_READ, 7, 0, REQUEST_SIZE_MAX_BYTES + 1),
        EINVAL,
        "READ",
        f"invalid request: READ: data request is too large: count={REQUEST_SIZE_MAX_BYTES + 1} "
        f"max={REQUEST_SIZE_MAX_BYTES}",
        id="read-too-large",
    ),
    pytest.param(
        "BARE01",
        request(CMD_FLUSH, 7),
        EINVAL,
        "FLUSH",
        "invalid request: FLUSH: operation not supported",
        id="flush-not-advertised",
    ),
    pytest.param(
        "PAY001",
        request(CMD_TRIM, 7, 0, 512),
        EINVAL,
        "TRIM",
        "invalid request: TRIM: operation not supported",
        id="trim-not-advertised",
    ),
    pytest.param(
        "BARE01",
        request(CMD_WRITE_ZEROES, 7, 0, 512),
        EINVAL,
        "WRITE_ZEROES",
        "invalid request: WRITE_ZEROES: operation not supported",
        id="zeroes-not-advertised",
    ),
]


@pytest.mark.parametrize(("export", "client_bytes", "error", "command", "message"), REJECTIONS)
def test_NbdServerConnection_rejects(
    export: str, client_bytes: bytes, error: int, command: str, message: str
) -> None:
    """An invalid request is answered by the codec with the chosen errno before any volume
    code runs, and the connection goes on."""
    conn = negotiated(export)
    events = feed(conn, client_bytes + request(CMD_READ, 8, 0, 1))
    assert events == [
        RequestRejected(handle=7, command=command, error=NbdError(error), message=message),
        ReadRequest(handle=8, offset=0, length=1),
    ]
    assert conn.data_to_send() == simple_reply(7, error)
    assert conn.statistics().rejected_total == 1
    assert conn.statistics().in_flight == 1


def test_NbdServerConnection_oversized_write_is_discarded() -> None:
    """A WRITE over REQUEST_SIZE_MAX_BYTES is refused EINVAL after its payload streamed past;
    the receive buffer never holds it."""
    conn = negotiated("BIG001")
    length = REQUEST_SIZE_MAX_BYTES + 1
    assert feed(conn, request(CMD_WRITE, 7, 0, length)) == []
    chunk = bytes(MiB)
    for _ in range(length // MiB):
        assert feed(conn, chunk) == []
        assert conn.statistics().buffered_bytes == 0
    assert conn.data_to_send() == b""
    events = feed(conn, b"\0" + request(CMD_FLUSH, 8))
    assert events == [
        RequestRejected(
            handle=7,
            command="WRITE",
            error=NbdError.EINVAL,
            message=f"invalid request: WRITE: data request is too large: count={length} "
            f"max={REQUEST_SIZE_MAX_BYTES}",
        ),
        FlushRequest(handle=8),
    ]
    assert conn.data_to_send() == simple_reply(7, EINVAL)


def test_NbdServerConnection_rejected_write_payload_in_buffer() -> None:
    """A refused WRITE whose payload came in the same chunk as what follows is skipped exactly."""
    conn = negotiated("RO0001")
    events = feed(conn, write(7, 0, b"x" * 5000) + write(8, 0, b"") + request(CMD_READ, 9, 0, 2))
    assert [type(event) for event in events] == [RequestRejected, RequestRejected, ReadRequest]
    assert conn.data_to_send() == simple_reply(7, EPERM) + simple_reply(8, EPERM)


def test_NbdServerConnection_bad_request_magic_closes() -> None:
    """A request without NBD_REQUEST_MAGIC drops the connection."""
    conn = negotiated()
    events = feed(conn, struct.pack("!IHHQQI", 0x12560953, 0, 0, 1, 0, 0))
    assert str(closed_by_peer(events)) == "nbd transmission: bad request magic: magic=0x12560953"
    assert conn.state is NbdState.CLOSED
    with pytest.raises(LocalProtocolError, match="state=CLOSED"):
        conn.next_event()


def test_NbdServerConnection_eof_during_transmission() -> None:
    """EOF between requests is an ordinary end; EOF inside a write payload is a violation."""
    conn = negotiated()
    assert feed(conn, b"") == [
        ConnectionClosed(reason="nbd transmission: client closed without NBD_CMD_DISC")
    ]
    conn = negotiated()
    assert feed(conn, write(1, 0, b"abcdef")[:-2]) == []
    assert str(closed_by_peer(feed(conn, b""))) == (
        "nbd transmission: connection closed in the middle of a message: "
        "buffered_bytes=32 missing_bytes=0"
    )
    conn = negotiated("RO0001")
    assert feed(conn, write(1, 0, b"abcdef")[:-2]) == []
    assert str(closed_by_peer(feed(conn, b""))).endswith("buffered_bytes=0 missing_bytes=2")


def test_NbdServerConnection_replies_survive_a_hard_close() -> None:
    """Requests in flight when the client vanished can still be answered (the bytes are moot)."""
    conn = negotiated()
    assert len(feed(conn, request(CMD_FLUSH, 1) + b"")) == 1
    assert isinstance(feed(conn, b"")[-1], ConnectionClosed)
    conn.reply_ok(1)
    assert conn.data_to_send() == simple_reply(1)


def test_NbdServerConnection_reused_handles_answer_oldest_first() -> None:
    """Two requests in flight with one handle are answered in arrival order."""
    conn = negotiated()
    feed(conn, request(CMD_READ, 5, 0, 1) + request(CMD_FLUSH, 5))
    conn.reply_read(5, b"a")
    conn.reply_ok(5)
    assert conn.data_to_send() == simple_reply(5, data=b"a") + simple_reply(5)
    with pytest.raises(LocalProtocolError, match="no request in flight: handle=5"):
        conn.reply_ok(5)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NbdError.ESHUTDOWN, 108),
        ("EPERM", EPERM),
        ("EROFS", EPERM),
        ("EDQUOT", ENOSPC),
        ("EFBIG", ENOSPC),
        ("ENOMEM", 12),
        ("ENOENT", EINVAL),
        (errno.EIO, EIO),
        (errno.ENOTSUP, EINVAL),
    ],
)
def test_NbdServerConnection_reply_error_maps_errno(
    error: NbdError | str | int, expected: int
) -> None:
    """reply_error takes an NbdError, an errno name or number, mapped as nbdkit maps them."""
    conn = negotiated()
    feed(conn, request(CMD_FLUSH, 1))
    conn.reply_error(1, error)
    assert conn.data_to_send() == simple_reply(1, expected)


def test_NbdServerConnection_reply_misuse() -> None:
    """Replies that do not fit a request in flight are the shell's bug and change nothing."""
    conn = negotiated()
    feed(conn, request(CMD_READ, 1, 0, 4) + request(CMD_FLUSH, 2))
    with pytest.raises(LocalProtocolError, match="no request in flight: handle=3"):
        conn.reply_ok(3)
    with pytest.raises(LocalProtocolError, match="wrong data length: handle=1 length=3 expected=4"):
        conn.reply_read(1, b"abc")
    with pytest.raises(LocalProtocolError, match="not a READ: handle=2 command=FLUSH"):
        conn.reply_read(2, b"")
    with pytest.raises(LocalProtocolError, match="a READ needs reply_read: handle=1"):
        conn.reply_ok(1)
    with pytest.raises(LocalProtocolError, match="not an errno name or number: error='EBOGUS'"):
        conn.reply_error(1, "EBOGUS")
    with pytest.raises(LocalProtocolError, match="not an errno name or number: error=99999"):
        conn.reply_error(1, 99999)
    assert conn.data_to_send() == b""
    assert conn.statistics().in_flight == 2


def test_NbdServerConnection_receive_after_eof() -> None:
    """Data after EOF is the shell's bug; a repeated EOF is harmless."""
    conn = new_connection()
    conn.receive_data(b"")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="data after EOF"):
        conn.receive_data(b"x")


def test_NbdServerConnection_long_message_is_cut_on_a_character() -> None:
    """An error message is cut to 4096 bytes without splitting a UTF-8 character."""
    conn = negotiated(structured=True)
    feed(conn, request(CMD_FLUSH, 1))
    conn.reply_error(1, "EIO", "é" * 3000)
    reply = conn.data_to_send()
    error, text = error_message(reply[20:])
    assert (error, text) == (EIO, "é" * 2048)


def test_NbdServerConnection_lookup_bugs_are_local_errors() -> None:
    """An export the protocol cannot carry is our bug: LocalProtocolError, not a peer error."""
    bad = {
        "NEG": ExportInfo(name="NEG", size_bytes=-1),
        "NUL": ExportInfo(name="N\0L", size_bytes=1),
    }
    for name, message in [("NEG", "export size out of range"), ("NUL", "cannot be sent")]:
        conn = NbdServerConnection(lookup=bad.get, list_exports=list)
        conn.receive_data(struct.pack("!I", 3) + option(OPT_GO, info_data(name)))
        with pytest.raises(LocalProtocolError, match=message):
            conn.next_event()
    conn = NbdServerConnection(lookup=bad.get, list_exports=lambda: ["x" * 5000])
    conn.receive_data(struct.pack("!I", 3) + option(OPT_LIST))
    with pytest.raises(LocalProtocolError, match=r"list_exports\(\) name cannot be sent"):
        conn.next_event()


def test_NbdServerConnection_repr_and_statistics() -> None:
    """repr shows the state, the export and the counters."""
    conn = new_connection()
    assert repr(conn) == (
        "<NbdServerConnection [CLIENT_FLAGS, export=None, in_flight=0, requests=0, rejected=0]>"
    )
    conn = negotiated()
    feed(conn, request(CMD_FLUSH, 1) + request(99, 2) + request(CMD_READ, 3, 0, 1)[:-1])
    assert repr(conn) == (
        "<NbdServerConnection [TRANSMISSION, export='PAY001', in_flight=1, requests=1, rejected=1]>"
    )
    stats = conn.statistics()
    assert (stats.state, stats.in_flight, stats.buffered_bytes) == (NbdState.TRANSMISSION, 1, 27)


# Hostile bytes and chunking, with Hypothesis.


def normalized(events: Iterable[Event]) -> list[object]:
    """Events with the attached exception replaced by its text, so runs can be compared."""
    return [
        (event.reason, str(event.error)) if isinstance(event, ConnectionClosed) else event
        for event in events
    ]


def run(
    conn: NbdServerConnection, chunks: Iterable[bytes], *, eof: bool
) -> tuple[list[Event], bytes]:
    """Feed chunks, answer each request as it comes, stop at the final event; return the
    events and everything the codec sent."""
    events: list[Event] = []
    output = bytearray()
    bound = 16 + OPTION_SIZE_MAX_BYTES + 28 + REQUEST_SIZE_MAX_BYTES
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        for _ in range(100_000):
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, ReadRequest):
                conn.reply_read(event.handle, bytes(event.length))
            elif isinstance(event, (WriteRequest, FlushRequest, TrimRequest, WriteZeroesRequest)):
                conn.reply_ok(event.handle)
            elif isinstance(event, (Disconnect, ConnectionClosed)):
                return events, bytes(output + conn.data_to_send())
        output += conn.data_to_send()
        assert conn.statistics().buffered_bytes <= bound
    return events, bytes(output)


def handshake_bytes(structured: bool) -> bytes:
    data = struct.pack("!I", 3)
    if structured:
        data += option(OPT_STRUCTURED_REPLY)
    return data + option(OPT_GO, info_data("TRIM01"))


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", struct.pack("!I", 3)]), garbage=st.binary(max_size=600))
def test_NbdServerConnection_garbage_during_handshake(prefix: bytes, garbage: bytes) -> None:
    """Arbitrary bytes during the handshake yield only events and NEED_DATA."""
    conn = new_connection()
    events, _ = run(conn, [prefix + garbage], eof=True)
    assert all(isinstance(event, Event) for event in events)
    assert isinstance(events[-1], (ConnectionClosed, Disconnect)) or conn.state in (
        NbdState.TRANSMISSION,
        NbdState.OPTIONS,
    )


@settings(max_examples=300, deadline=None)
@given(structured=st.booleans(), garbage=st.binary(max_size=600))
def test_NbdServerConnection_garbage_during_transmission(structured: bool, garbage: bytes) -> None:
    """Arbitrary bytes after GO yield only events and NEED_DATA, and the connection ends."""
    conn = new_connection()
    events, _ = run(conn, [handshake_bytes(structured), garbage], eof=True)
    assert isinstance(events[0], ExportChosen)
    assert isinstance(events[-1], (ConnectionClosed, Disconnect))


def client_messages() -> st.SearchStrategy[bytes]:
    """Plausible client traffic: options and requests, valid or not, and some garbage."""
    handles = st.integers(0, 2**64 - 1)
    offsets = st.one_of(st.integers(0, SIZE), st.integers(0, 2**64 - 1))
    lengths = st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1))
    names = st.sampled_from(["", "TRIM01", "RO0001", "NOSUCH"])
    options = st.one_of(
        st.builds(option, st.integers(0, 12), st.binary(max_size=40)),
        st.builds(
            lambda number, name, requests: option(number, info_data(name, *requests)),
            st.sampled_from([OPT_INFO, OPT_GO]),
            names,
            st.lists(st.integers(0, 4), max_size=4),
        ),
        st.builds(lambda name: option(OPT_EXPORT_NAME, name.encode()), names),
    )
    requests = st.one_of(
        st.builds(
            request,
            st.sampled_from([CMD_READ, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE, 42]),
            handles,
            offsets,
            lengths,
            st.integers(0, 0x1F),
        ),
        st.builds(write, handles, st.integers(0, SIZE), st.binary(max_size=64), st.integers(0, 3)),
        st.builds(
            lambda handle, length: request(CMD_WRITE, handle, 0, length),
            handles,
            st.integers(65, 300),
        ),
    )
    return st.one_of(options, requests, st.binary(max_size=8))


@settings(max_examples=200, deadline=None)
@given(
    structured=st.booleans(),
    messages=st.lists(client_messages(), max_size=12),
    eof=st.booleans(),
)
def test_NbdServerConnection_byte_at_a_time(
    structured: bool, messages: list[bytes], eof: bool
) -> None:
    """Feeding bytes one at a time gives the same events and replies as feeding them at once."""
    stream = handshake_bytes(structured) + b"".join(messages)
    whole = run(new_connection(), [stream], eof=eof)
    single = run(new_connection(), [stream[i : i + 1] for i in range(len(stream))], eof=eof)
    assert normalized(single[0]) == normalized(whole[0])
    assert single[1] == whole[1]


@settings(max_examples=100, deadline=None)
@given(
    length=st.integers(1, 2**32 - 1),
    chunk_sizes=st.lists(st.integers(1, 65536), min_size=1, max_size=20),
    read_only=st.booleans(),
)
def test_NbdServerConnection_refused_write_payload_stays_unbuffered(
    length: int, chunk_sizes: list[int], read_only: bool
) -> None:
    """A WRITE the codec refuses never makes it buffer its payload, whatever length it claims."""
    conn = negotiated("RO0001" if read_only else "PAY001")
    offset = 0 if read_only else SIZE  # refused as EPERM or as out of range
    events = feed(conn, request(CMD_WRITE, 1, offset, length))
    sent = 0
    for size in chunk_sizes:
        size = min(size, length - sent)
        if not size:
            break
        events += feed(conn, bytes(size))
        sent += size
        assert conn.statistics().buffered_bytes == 0
    refused = [event for event in events if isinstance(event, RequestRejected)]
    assert events == refused
    assert len(refused) == (1 if sent == length else 0)


# TLS required (FORCEDTLS).

REP_ERR_TLS_REQD = 2**31 + 5


def tls_connection() -> NbdServerConnection:
    conn = NbdServerConnection(lookup=lookup, list_exports=lambda: list(EXPORTS), tls=True)
    conn.data_to_send()
    assert feed(conn, struct.pack("!I", 3)) == []
    return conn


@pytest.mark.parametrize(
    "number", [OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT, 99]
)
def test_NbdServerConnection_tls_required_refuses_options_before_starttls(number: int) -> None:
    conn = tls_connection()
    assert feed(conn, option(number, info_data("PAY001"))) == []
    [(replied, reply, data)] = parse_option_replies(conn.data_to_send())
    assert (replied, reply) == (number, REP_ERR_TLS_REQD)
    assert b"this server requires TLS: send STARTTLS first" in data
    assert not conn.tls_active


def test_NbdServerConnection_tls_required_export_name_closes() -> None:
    conn = tls_connection()
    error = closed_by_peer(feed(conn, option(OPT_EXPORT_NAME, b"PAY001")))
    assert "this server requires TLS (STARTTLS first)" in str(error)
    assert conn.data_to_send() == b""  # EXPORT_NAME cannot carry an error: nothing is sent


def test_NbdServerConnection_tls_required_abort_is_acknowledged() -> None:
    conn = tls_connection()
    [closed] = feed(conn, option(OPT_ABORT))
    assert isinstance(closed, ConnectionClosed) and closed.error is None
    assert parse_option_replies(conn.data_to_send()) == [(OPT_ABORT, REP_ACK, b"")]


def test_NbdServerConnection_starttls_waits_for_the_upgrade_then_serves() -> None:
    conn = tls_connection()
    assert feed(conn, option(OPT_STARTTLS)) == [StartTls()]
    assert parse_option_replies(conn.data_to_send()) == [(OPT_STARTTLS, REP_ACK, b"")]
    conn.receive_data(option(OPT_LIST))  # sent too early: not decoded before the upgrade
    assert drain(conn) == []
    with pytest.raises(_LocalProtocolError):
        NbdServerConnection(lookup=lookup, list_exports=list, tls=True).tls_started()
    conn.tls_started()
    assert conn.tls_active
    events = feed(conn, option(OPT_STARTTLS) + option(OPT_GO, info_data("PAY001")))
    assert events == [ExportChosen(name="PAY001", info=EXPORTS["PAY001"])]
    replies = parse_option_replies(conn.data_to_send())
    assert replies[0][:2] == (OPT_LIST, REP_SERVER)  # now answered, over TLS
    assert (OPT_STARTTLS, REP_ERR_INVALID) in [r[:2] for r in replies]  # TLS already in use
    assert replies[-1] == (OPT_GO, REP_ACK, b"")


def test_NbdServerConnection_bytes_after_starttls_before_its_reply_close() -> None:
    conn = tls_connection()
    error = closed_by_peer(feed(conn, option(OPT_STARTTLS) + b"\x16\x03\x01"))
    assert "data sent before the server's reply" in str(error)
