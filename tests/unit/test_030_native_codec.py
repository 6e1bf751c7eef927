"""The native protocol codec and its authentication helpers, byte for byte, without sockets.

Expected bytes are built by hand from the frame layout `length u32 | kind u8 | flags u8 |
reserved u16 | request_id u64 | body` with the kinds and codes written out here, so the tests
check the codec against the protocol rather than against itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from remcopy.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    VersionMismatch,
)
from remcopy.events import Event, EventKind
from remcopy.states import CopyMode, FencePolicy, PairRole, PairState
from remcopy.wire import auth
from remcopy.wire.native import (
    CLOSED,
    DEVICES_MAX,
    DOCUMENT_SIZE_MAX_BYTES,
    EVENT_SIZE_MAX_BYTES,
    FRAME_SIZE_MAX_BYTES,
    IO_SIZE_MAX_BYTES,
    NAME_SIZE_MAX_BYTES,
    NEED_DATA,
    PROTOCOL_VERSION,
    RECEIVE_BUFFER_BYTES,
    RECEIVE_BUFFER_START_BYTES,
    RECEIVE_ROOM_MIN_BYTES,
    TEXT_SIZE_MAX_BYTES,
    Challenge,
    Connection,
    DeviceIdentity,
    DeviceStatus,
    ErrorReply,
    EventNotice,
    FlushReply,
    FlushRequest,
    Hello,
    IdentifyReply,
    IdentifyRequest,
    Message,
    PairItem,
    PairOp,
    PairOpReply,
    PairOpRequest,
    PairResult,
    PeerRole,
    Phase,
    Proof,
    QueryReply,
    QueryRequest,
    ReadReply,
    ReadRequest,
    Side,
    StatusReply,
    StatusRequest,
    SubscribeRequest,
    Update,
    UpdateAck,
    UpdateBatch,
    Watermark,
    Welcome,
    WriteReply,
    WriteRequest,
    encode,
    pack_items,
)
from strategies import VOLSER_ALPHABET

# The protocol's numbers, written out independently of the codec.
KIND_HELLO, KIND_CHALLENGE, KIND_PROOF, KIND_WELCOME, KIND_ERROR = 1, 2, 3, 4, 5
KIND_IDENTIFY, KIND_IDENTIFY_REPLY, KIND_READ, KIND_READ_REPLY = 10, 11, 12, 13
KIND_WRITE, KIND_WRITE_REPLY, KIND_FLUSH, KIND_FLUSH_REPLY = 14, 15, 16, 17
KIND_QUERY, KIND_QUERY_REPLY = 18, 19
KIND_STATUS, KIND_STATUS_REPLY = 22, 23
KIND_SUBSCRIBE, KIND_EVENT = 28, 29
EVENT_KIND_CODES = {"state": 0, "hold": 1, "freeze": 2, "gap": 13, "subscribed": 14}
FLAG_FUA = 0x01
HEADER_BYTES = 16  # the whole header, length field included
LENGTH_MIN = 12  # `length` counts the header after itself plus the body
ROLE_HOST, ROLE_PEER = 1, 2
STATE_CODES = {
    PairState.SIMPLEX: 0,
    PairState.PENDING: 1,
    PairState.DUPLEX: 2,
    PairState.SUSPENDED: 3,
    PairState.SUSPENDED_ERROR: 4,
    PairState.RECOVERED: 5,
}
ROLE_CODES = {PairRole.NONE: 0, PairRole.PRIMARY: 1, PairRole.SECONDARY: 2}
MODE_CODES = {None: 0, CopyMode.SYNC: 1, CopyMode.ASYNC: 2, CopyMode.SEMISYNC: 3}
NONCE_BYTES = 32
PROOF_BYTES = 32
U16_MAX, U32_MAX, U64_MAX = 2**16 - 1, 2**32 - 1, 2**64 - 1

SECRET = b"s3cret-hosta-key"
CLIENT_NAME = "hosta"
SERVER_NAME = "ctl-east"
SERIAL = 64015
CLIENT_NONCE = bytes(range(32))
SERVER_NONCE = bytes(range(100, 132))
SOME_PROOF = bytes(range(200, 232))

ANY_PHASE_STEPS = (0, 1, 2)  # fresh, mid-handshake, ready: see `connection_at`


# Building bytes by hand.


def frame(kind: int, body: bytes = b"", *, flags: int = 0, request_id: int = 0) -> bytes:
    return struct.pack("!IBBHQ", LENGTH_MIN + len(body), kind, flags, 0, request_id) + body


def name_bytes(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def hello_body(
    version: int = PROTOCOL_VERSION, role: int = ROLE_HOST, name: str = CLIENT_NAME
) -> bytes:
    return struct.pack("!HB", version, role) + CLIENT_NONCE + name_bytes(name)


# Driving connections.


def drain(conn: Connection) -> list[Message]:
    """Every whole message up to NEED_DATA or CLOSED; bounded."""
    messages: list[Message] = []
    for _ in range(10_000):
        event = conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return messages
        assert isinstance(event, Message)
        messages.append(event)
    raise AssertionError("next_event did not settle")


def feed(conn: Connection, data: bytes) -> list[Message]:
    conn.receive_data(data)
    return drain(conn)


class ConnectionPair:
    """A client and a server joined by an in-memory link (h11's ConnectionPair)."""

    def __init__(self) -> None:
        self.client = Connection(Side.CLIENT)
        self.server = Connection(Side.SERVER)

    def send(self, side: Side, *messages: Message) -> list[Message]:
        """Send from `side` in one write; return what the other side received."""
        sender, receiver = (
            (self.client, self.server) if side is Side.CLIENT else (self.server, self.client)
        )
        return feed(receiver, b"".join(sender.send(m) for m in messages))


def transcript(role: PeerRole = PeerRole.HOST, **changes: Any) -> auth.Transcript:
    fields: dict[str, Any] = {
        "role": int(role),
        "client": CLIENT_NAME,
        "server": SERVER_NAME,
        "client_nonce": CLIENT_NONCE,
        "server_nonce": SERVER_NONCE,
    }
    fields.update(changes)
    return auth.Transcript(**fields)


def handshake(pair: ConnectionPair, *, role: PeerRole = PeerRole.HOST) -> None:
    """Authenticate both ends of `pair` the way the controller and the host channel do."""
    [hello] = pair.send(Side.CLIENT, Hello(role=role, name=CLIENT_NAME, nonce=CLIENT_NONCE))
    assert isinstance(hello, Hello)
    # The server binds what it received and what it chose.
    at_server = auth.Transcript(
        role=int(hello.role),
        client=hello.name,
        server=SERVER_NAME,
        client_nonce=hello.nonce,
        server_nonce=SERVER_NONCE,
    )
    [challenge] = pair.send(Side.SERVER, Challenge(name=SERVER_NAME, nonce=SERVER_NONCE))
    assert isinstance(challenge, Challenge)
    # The client binds what it sent and what it received, and proves first: the challenge
    # carries nothing computed from the secret.
    at_client = auth.Transcript(
        role=int(role),
        client=CLIENT_NAME,
        server=challenge.name,
        client_nonce=CLIENT_NONCE,
        server_nonce=challenge.nonce,
    )
    [answer] = pair.send(Side.CLIENT, Proof(proof=auth.client_proof(SECRET, at_client)))
    assert isinstance(answer, Proof)
    assert auth.proofs_equal(answer.proof, auth.client_proof(SECRET, at_server))
    # Only then does the server prove itself, in WELCOME; the client checks it.
    proof = auth.server_proof(SECRET, at_server)
    [welcome] = pair.send(Side.SERVER, Welcome(serial=SERIAL, name=SERVER_NAME, proof=proof))
    assert welcome == Welcome(serial=SERIAL, name=SERVER_NAME, proof=proof)
    assert auth.proofs_equal(welcome.proof, auth.server_proof(SECRET, at_client))


def ready_pair() -> ConnectionPair:
    pair = ConnectionPair()
    handshake(pair)
    return pair


def connection_at(side: Side, step: int) -> Connection:
    """A connection after `step` handshake steps: 0 fresh, 1 mid-handshake, 2 ready.

    Mid-handshake is, for a server, HELLO received and CHALLENGE sent; for a client, HELLO
    sent, CHALLENGE received and PROOF sent.
    """
    pair = ConnectionPair()
    conn = pair.client if side is Side.CLIENT else pair.server
    if step >= 1:
        pair.send(Side.CLIENT, Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
        pair.send(Side.SERVER, Challenge(name=SERVER_NAME, nonce=SERVER_NONCE))
        if side is Side.CLIENT:
            pair.send(Side.CLIENT, Proof(proof=SOME_PROOF))
    if step >= 2:
        if side is Side.SERVER:
            pair.send(Side.CLIENT, Proof(proof=SOME_PROOF))
        pair.send(Side.SERVER, Welcome(serial=SERIAL, name=SERVER_NAME))
        assert conn.phase is Phase.READY
    return conn


REQUEST_TYPES = (
    IdentifyRequest,
    ReadRequest,
    WriteRequest,
    FlushRequest,
    QueryRequest,
    SubscribeRequest,
    StatusRequest,
)


def receiver_for(msg: Message) -> Connection:
    """A connection in the phase where it accepts `msg` from its peer."""
    if isinstance(msg, Hello):
        return Connection(Side.SERVER)
    if isinstance(msg, Proof):
        conn = Connection(Side.SERVER)
        feed(conn, frame(KIND_HELLO, hello_body()))
        conn.send(Challenge(name=SERVER_NAME, nonce=SERVER_NONCE))
        return conn
    if isinstance(msg, Challenge):
        conn = Connection(Side.CLIENT)
        conn.send(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
        return conn
    if isinstance(msg, Welcome):
        conn = Connection(Side.CLIENT)
        conn.send(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
        feed(conn, encode(Challenge(name=SERVER_NAME, nonce=SERVER_NONCE)))
        conn.send(Proof(proof=SOME_PROOF))
        return conn
    if isinstance(msg, REQUEST_TYPES):
        return connection_at(Side.SERVER, 2)
    return connection_at(Side.CLIENT, 2)


def decode(msg: Message, data: bytes) -> Message:
    """Decode one frame with a connection in the phase that accepts `msg`."""
    conn = receiver_for(msg)
    [decoded] = feed(conn, data)
    assert conn.next_event() is NEED_DATA
    return decoded


# The table: each message and its bytes, built by hand.

IDENTITY = DeviceIdentity(
    device=0x0A3F,
    status=0,
    ssid=0x1A00,
    serial=SERIAL,
    capacity_bytes=4 * 1024 * 1024,
    track_size_bytes=65536,
    state=PairState.DUPLEX,
    role=PairRole.PRIMARY,
    volser="PAY001",
)
IDENTITY_BYTES = struct.pack(
    "!HHHIQIBB6s", 0x0A3F, 0, 0x1A00, SERIAL, 4 * 1024 * 1024, 65536, 2, 1, b"PAY001"
)
UNKNOWN_IDENTITY = DeviceIdentity(device=0x0B00, status=21, volser="AB")
UNKNOWN_IDENTITY_BYTES = struct.pack("!HHHIQIBB6s", 0x0B00, 21, 0, 0, 0, 0, 0, 0, b"AB\0\0\0\0")
STATUS = DeviceStatus(
    device=0x0A3F,
    status=0,
    state=PairState.SUSPENDED,
    role=PairRole.SECONDARY,
    mode=CopyMode.SEMISYNC,
    flags=0x81,
    suspend_at_ns=1_700_000_000_123_456_789,
    dirty_tracks=812,
    lag_bytes=65536,
    lag_ns=2_000_000,
    peer_serial=64016,
    peer_device=0x0A40,
    copy_left_tracks=37,
    fence=FencePolicy.DATA,
    consistency_group=True,
    tracks=1024,
    changed_at_ns=1_700_000_000_123_456_789,
    change_cause="suspend",
    consistency_time_ns=1_700_000_000_000_000_001,
    journal_bytes=196_608,
)
# The fields every version had, then fence, consistency group, tracks, when the state last
# changed, the async consistency time C, the journal bytes and the length of its cause, then
# the cause.
NO_MORE_STATUS = struct.pack("!BBQQQQB", 0, 0, 0, 0, 0, 0, 0)
STATUS_BYTES = (
    struct.pack(
        "!HHBBBBQQQQIHQ",
        0x0A3F,
        0,
        3,
        2,
        3,
        0x81,
        1_700_000_000_123_456_789,
        812,
        65536,
        2_000_000,
        64016,
        0x0A40,
        37,
    )
    + struct.pack(
        "!BBQQQQB", 1, 1, 1024, 1_700_000_000_123_456_789, 1_700_000_000_000_000_001, 196_608, 7
    )
    + b"suspend"
)
STATE_EVENT = Event(
    kind=EventKind.STATE,
    seq=41,
    serial=SERIAL,
    controller="ctl-east",
    time_ns=1_700_000_000_000_000_001,
    text="pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED at=5 cause=suspend",
    device="64015:1A00:0A:3F",
    old=PairState.DUPLEX,
    new=PairState.SUSPENDED,
    cause="suspend",
    at_ns=5,
    detail={"op": "suspend"},
)
STATE_EVENT_BYTES = struct.pack("!QQIB", 41, 1_700_000_000_000_000_001, SERIAL, 0) + (
    b'{"at_ns":5,"cause":"suspend","controller":"ctl-east","detail":{"op":"suspend"},'
    b'"device":"64015:1A00:0A:3F","new":"SUSPENDED","old":"DUPLEX",'
    b'"text":"pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED at=5 cause=suspend"}'
)

CASES: list[tuple[Message, bytes]] = [
    (
        Hello(role=PeerRole.HOST, name=CLIENT_NAME, nonce=CLIENT_NONCE),
        frame(KIND_HELLO, b"\x00\x02" + b"\x01" + CLIENT_NONCE + b"\x00\x05hosta"),
    ),
    (
        Hello(role=PeerRole.PEER, name="", nonce=CLIENT_NONCE),
        frame(KIND_HELLO, b"\x00\x02" + b"\x02" + CLIENT_NONCE + b"\x00\x00"),
    ),
    (
        Challenge(name=SERVER_NAME, nonce=SERVER_NONCE),
        frame(KIND_CHALLENGE, b"\x00\x02" + SERVER_NONCE + b"\x00\x08ctl-east"),
    ),
    (Proof(proof=SOME_PROOF), frame(KIND_PROOF, SOME_PROOF)),
    (
        Welcome(serial=SERIAL, name=SERVER_NAME, proof=SOME_PROOF),
        frame(KIND_WELCOME, b"\x00\x00\xfa\x0f" + SOME_PROOF + b"\x00\x08ctl-east"),
    ),
    (
        Welcome(serial=U32_MAX, name="é"),
        frame(KIND_WELCOME, b"\xff\xff\xff\xff" + bytes(PROOF_BYTES) + b"\x00\x02\xc3\xa9"),
    ),
    (
        ErrorReply(request_id=7, code=25, message="device busy"),
        frame(KIND_ERROR, b"\x00\x19device busy", request_id=7),
    ),
    (ErrorReply(code=44, message=""), frame(KIND_ERROR, b"\x00\x2c")),
    (
        IdentifyRequest(request_id=1, devices=(0x0A3F, 0x0001)),
        frame(KIND_IDENTIFY, b"\x0a\x3f\x00\x01", request_id=1),
    ),
    (IdentifyRequest(request_id=2), frame(KIND_IDENTIFY, request_id=2)),
    (
        IdentifyReply(request_id=1, identities=(IDENTITY, UNKNOWN_IDENTITY)),
        frame(KIND_IDENTIFY_REPLY, IDENTITY_BYTES + UNKNOWN_IDENTITY_BYTES, request_id=1),
    ),
    (IdentifyReply(request_id=3), frame(KIND_IDENTIFY_REPLY, request_id=3)),
    (
        ReadRequest(request_id=U64_MAX, device=U16_MAX, offset=U64_MAX, length=IO_SIZE_MAX_BYTES),
        frame(
            KIND_READ,
            b"\xff\xff" + b"\xff" * 8 + b"\x01\x00\x00\x00",
            request_id=U64_MAX,
        ),
    ),
    (
        ReadRequest(request_id=4, device=0x0A3F, offset=65536, length=4096),
        frame(KIND_READ, b"\x0a\x3f" + b"\0\0\0\0\0\x01\0\0" + b"\0\0\x10\0", request_id=4),
    ),
    (ReadReply(request_id=4, data=b"track"), frame(KIND_READ_REPLY, b"track", request_id=4)),
    (ReadReply(request_id=5), frame(KIND_READ_REPLY, request_id=5)),
    (
        WriteRequest(
            request_id=6, device=0x0A3F, offset=512, timestamp_ns=10**18, fua=True, data=b"abc"
        ),
        frame(
            KIND_WRITE,
            b"\x0a\x3f" + struct.pack("!QQ", 512, 10**18) + b"abc",
            flags=FLAG_FUA,
            request_id=6,
        ),
    ),
    (
        WriteRequest(request_id=7, device=1, offset=0, timestamp_ns=0, data=b""),
        frame(KIND_WRITE, b"\x00\x01" + b"\0" * 16, request_id=7),
    ),
    (WriteReply(request_id=6), frame(KIND_WRITE_REPLY, request_id=6)),
    (FlushRequest(request_id=8, devices=(0,)), frame(KIND_FLUSH, b"\0\0", request_id=8)),
    (FlushRequest(request_id=9), frame(KIND_FLUSH, request_id=9)),
    (FlushReply(request_id=8), frame(KIND_FLUSH_REPLY, request_id=8)),
    (QueryRequest(request_id=10, devices=(0xFFFF,)), frame(KIND_QUERY, b"\xff\xff", request_id=10)),
    (
        QueryReply(request_id=10, statuses=(STATUS,)),
        frame(KIND_QUERY_REPLY, STATUS_BYTES, request_id=10),
    ),
    (
        QueryReply(request_id=11, statuses=(DeviceStatus(device=2),)),
        frame(KIND_QUERY_REPLY, b"\x00\x02" + b"\0" * 52 + NO_MORE_STATUS, request_id=11),
    ),
    (SubscribeRequest(request_id=12), frame(KIND_SUBSCRIBE, b"\0" * 9, request_id=12)),
    (
        SubscribeRequest(request_id=12, replay=True, after_seq=U64_MAX),
        frame(KIND_SUBSCRIBE, b"\x01" + b"\xff" * 8, request_id=12),
    ),
    (
        EventNotice(request_id=12, event=STATE_EVENT),
        frame(KIND_EVENT, STATE_EVENT_BYTES, request_id=12),
    ),
    (
        EventNotice(request_id=12, event=Event(kind=EventKind.SUBSCRIBED, seq=7, text="")),
        frame(
            KIND_EVENT,
            struct.pack("!QQIB", 7, 0, 0, EVENT_KIND_CODES["subscribed"]) + b'{"text":""}',
            request_id=12,
        ),
    ),
    (StatusRequest(request_id=13), frame(KIND_STATUS, request_id=13)),
    (
        StatusReply(request_id=13, document={"serial": SERIAL, "name": "ctl-east", "v": [1]}),
        frame(
            KIND_STATUS_REPLY,
            b'{"name":"ctl-east","serial":64015,"v":[1]}',
            request_id=13,
        ),
    ),
    (StatusReply(request_id=14), frame(KIND_STATUS_REPLY, b"{}", request_id=14)),
]


CASE_IDS = [f"{type(msg).__name__}-{n}" for n, (msg, _) in enumerate(CASES)]


@pytest.mark.parametrize(("msg", "data"), CASES, ids=CASE_IDS)
def test_encode_matches_the_frame_layout(msg: Message, data: bytes) -> None:
    """A message encodes to exactly the bytes built by hand from the layout."""
    assert encode(msg) == data


@pytest.mark.parametrize(("msg", "data"), CASES, ids=CASE_IDS)
def test_Connection_decodes_the_frame_layout(msg: Message, data: bytes) -> None:
    """The bytes built by hand decode to exactly the message."""
    assert decode(msg, data) == msg


def test_cases_cover_every_message_kind() -> None:
    """The table holds at least one case for every frame kind of the protocol."""
    kinds = {value for name, value in globals().items() if name.startswith("KIND_")}
    assert len(kinds) == 19  # 20 and 21 are retired
    assert {data[4] for _, data in CASES} == kinds
    assert {msg.KIND for msg, _ in CASES} == kinds


@pytest.mark.parametrize(("state", "code"), list(STATE_CODES.items()))
def test_PairState_wire_codes(state: PairState, code: int) -> None:
    """Each pair state travels as its fixed one-byte code."""
    msg = QueryReply(statuses=(DeviceStatus(device=1, state=state),))
    data = frame(
        KIND_QUERY_REPLY, struct.pack("!HHBBBBQQQQIHQ", 1, 0, code, *[0] * 10) + NO_MORE_STATUS
    )
    assert encode(msg) == data
    assert decode(msg, data) == msg


@pytest.mark.parametrize(("role", "code"), list(ROLE_CODES.items()))
def test_PairRole_wire_codes(role: PairRole, code: int) -> None:
    """Each pair role travels as its fixed one-byte code."""
    msg = IdentifyReply(identities=(DeviceIdentity(device=1, role=role),))
    data = frame(KIND_IDENTIFY_REPLY, struct.pack("!HHHIQIBB6s", 1, 0, 0, 0, 0, 0, 0, code, b""))
    assert encode(msg) == data
    assert decode(msg, data) == msg


@pytest.mark.parametrize(("mode", "code"), list(MODE_CODES.items()))
def test_CopyMode_wire_codes(mode: CopyMode | None, code: int) -> None:
    """Each copy mode, and no mode, travels as its fixed one-byte code."""
    msg = QueryReply(statuses=(DeviceStatus(device=1, mode=mode),))
    data = frame(
        KIND_QUERY_REPLY, struct.pack("!HHBBBBQQQQIHQ", 1, 0, 0, 0, code, *[0] * 8) + NO_MORE_STATUS
    )
    assert encode(msg) == data
    assert decode(msg, data) == msg


def test_StatusReply_document_is_sorted_json() -> None:
    """A status document travels as JSON with sorted keys."""
    data = encode(StatusReply(request_id=1, document={"b": 1, "a": [True, None]}))
    assert json.loads(data[HEADER_BYTES:]) == {"a": [True, None], "b": 1}
    assert data[HEADER_BYTES:] == b'{"a":[true,null],"b":1}'


# The handshake and requests over an in-memory link.


def test_ConnectionPair_handshake_then_pipelined_requests_out_of_order() -> None:
    """A client authenticates, pipelines three requests, and matches replies in any order."""
    pair = ConnectionPair()
    assert (pair.client.phase, pair.server.phase) == (Phase.HELLO, Phase.HELLO)
    handshake(pair)
    assert (pair.client.phase, pair.server.phase) == (Phase.READY, Phase.READY)

    requests = [
        ReadRequest(request_id=1, device=0x0A3F, offset=0, length=5),
        WriteRequest(request_id=2, device=0x0A3F, offset=4096, timestamp_ns=1, data=b"x" * 9),
        QueryRequest(request_id=3, devices=(0x0A3F,)),
    ]
    assert pair.send(Side.CLIENT, *requests) == requests

    replies = [
        QueryReply(request_id=3, statuses=(STATUS,)),
        ReadReply(request_id=1, data=b"hello"),
        WriteReply(request_id=2),
    ]
    received = pair.send(Side.SERVER, *replies)
    assert received == replies
    by_id = {reply.request_id: reply for reply in received}
    assert isinstance(by_id[1], ReadReply)
    assert isinstance(by_id[2], WriteReply)
    assert isinstance(by_id[3], QueryReply)


def test_ConnectionPair_handshake_as_a_peer_controller() -> None:
    """A peer controller authenticates with its own role and then subscribes to events."""
    pair = ConnectionPair()
    handshake(pair, role=PeerRole.PEER)
    assert pair.send(Side.CLIENT, SubscribeRequest(request_id=9)) == [
        SubscribeRequest(request_id=9)
    ]
    notices = [
        EventNotice(request_id=9, event=Event(kind=EventKind.HOLD, seq=n, device=f"d{n}"))
        for n in range(3)
    ]
    assert pair.send(Side.SERVER, *notices) == notices


def test_ConnectionPair_error_replies_keep_a_ready_connection_open() -> None:
    """An error frame answering one request leaves both ends ready for the next."""
    pair = ready_pair()
    pair.send(Side.CLIENT, WriteRequest(request_id=1, device=1, data=b"x"))
    assert pair.send(Side.SERVER, ErrorReply(request_id=1, code=24, message="read only")) == [
        ErrorReply(request_id=1, code=24, message="read only")
    ]
    assert (pair.client.phase, pair.server.phase) == (Phase.READY, Phase.READY)
    assert pair.send(Side.CLIENT, FlushRequest(request_id=2)) == [FlushRequest(request_id=2)]


def test_ConnectionPair_refused_handshake_closes_both_ends() -> None:
    """A server that refuses the proof sends an error frame and both ends are closed."""
    pair = ConnectionPair()
    pair.send(Side.CLIENT, Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
    pair.send(Side.SERVER, Challenge(name=SERVER_NAME, nonce=SERVER_NONCE))
    pair.send(Side.CLIENT, Proof(proof=SOME_PROOF))
    refusal = ErrorReply(code=44, message="hosta: wrong secret")
    assert pair.send(Side.SERVER, refusal) == [refusal]
    assert (pair.client.phase, pair.server.phase) == (Phase.CLOSED, Phase.CLOSED)
    assert pair.client.next_event() is CLOSED
    with pytest.raises(LocalProtocolError, match="closed connection"):
        pair.client.send(StatusRequest(request_id=1))


def test_Connection_repr_shows_side_phase_and_counters() -> None:
    """The repr names the side, the phase, the frames received and the bytes buffered."""
    pair = ready_pair()
    pair.server.receive_data(frame(KIND_STATUS, request_id=1)[:5])
    assert repr(pair.server) == "<native.Connection server READY frames=2 buffered=5>"
    handshake_bytes = len(encode(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))) + HEADER_BYTES + 32
    assert pair.server.bytes_received == handshake_bytes + 5


# Phases.

REQUESTS_FOR_PHASES = [
    IdentifyRequest(request_id=1),
    ReadRequest(request_id=1, device=1, length=1),
    WriteRequest(request_id=1, device=1, data=b"x"),
    FlushRequest(request_id=1),
    QueryRequest(request_id=1),
    SubscribeRequest(request_id=1),
    StatusRequest(request_id=1),
]


@pytest.mark.parametrize("request_msg", REQUESTS_FOR_PHASES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("step", [0, 1])
def test_Connection_server_refuses_requests_before_authentication(
    request_msg: Message, step: int
) -> None:
    """A server refuses every request kind before WELCOME, then reports CLOSED."""
    conn = connection_at(Side.SERVER, step)
    conn.receive_data(encode(request_msg))
    with pytest.raises(RemoteProtocolError, match="before authentication"):
        conn.next_event()
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is CLOSED


def test_Connection_server_refuses_a_request_between_proof_and_welcome() -> None:
    """A request right behind the PROOF is refused while the server has not sent WELCOME."""
    conn = connection_at(Side.SERVER, 1)
    conn.receive_data(encode(Proof(proof=SOME_PROOF)) + encode(StatusRequest(request_id=1)))
    assert conn.next_event() == Proof(proof=SOME_PROOF)
    with pytest.raises(RemoteProtocolError, match="before authentication"):
        conn.next_event()


@pytest.mark.parametrize("request_msg", REQUESTS_FOR_PHASES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("step", [0, 1])
def test_Connection_client_cannot_send_requests_before_ready(
    request_msg: Message, step: int
) -> None:
    """A client refuses to send a request before READY, and its phase does not change."""
    conn = connection_at(Side.CLIENT, step)
    phase = conn.phase
    with pytest.raises(LocalProtocolError, match="client cannot send"):
        conn.send(request_msg)
    assert conn.phase is phase


@pytest.mark.parametrize(
    ("side", "step", "data", "match"),
    [
        (Side.SERVER, 0, frame(KIND_PROOF, SOME_PROOF), "expected HELLO first"),
        (Side.SERVER, 1, frame(KIND_HELLO, hello_body()), "expected PROOF"),
        (Side.SERVER, 0, encode(Welcome(name="x")), "not allowed from the client"),
        (Side.SERVER, 2, frame(KIND_HELLO, hello_body()), "not allowed from the client"),
        (Side.SERVER, 2, encode(ReadReply(data=b"x")), "not allowed from the client"),
        (Side.CLIENT, 0, encode(Welcome(name="x")), "WELCOME before the challenge"),
        (Side.CLIENT, 2, frame(KIND_HELLO, hello_body()), "not allowed from the server"),
        (Side.CLIENT, 2, encode(StatusRequest(request_id=1)), "not allowed from the server"),
        (Side.CLIENT, 0, encode(ReadReply(data=b"x")), "not allowed from the server"),
    ],
)
def test_Connection_refuses_frames_out_of_order(
    side: Side, step: int, data: bytes, match: str
) -> None:
    """A handshake frame out of its turn, or a kind from the wrong side, closes the connection."""
    conn = connection_at(side, step)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()
    assert conn.phase is Phase.CLOSED


def test_Connection_client_refuses_a_challenge_before_hello() -> None:
    """A client that has not sent HELLO refuses a CHALLENGE."""
    conn = Connection(Side.CLIENT)
    conn.receive_data(encode(Challenge(name="x", nonce=SERVER_NONCE)))
    with pytest.raises(RemoteProtocolError, match="CHALLENGE before HELLO was sent"):
        conn.next_event()


@pytest.mark.parametrize("challenged", [False, True])
def test_Connection_client_refuses_welcome_before_its_proof(challenged: bool) -> None:
    """A client refuses WELCOME until it has answered a CHALLENGE, which proves the server."""
    conn = Connection(Side.CLIENT)
    conn.send(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
    if challenged:
        feed(conn, encode(Challenge(name="x", nonce=SERVER_NONCE)))
    conn.receive_data(encode(Welcome(serial=1, name="x")))
    with pytest.raises(RemoteProtocolError, match="WELCOME before the challenge was answered"):
        conn.next_event()
    assert conn.phase is Phase.CLOSED


@pytest.mark.parametrize(
    ("step", "msg"),
    [
        (0, Welcome(name="x")),
        (0, Proof(proof=SOME_PROOF)),
        (0, ReadReply(request_id=1)),
        (1, Challenge(name="x", nonce=SERVER_NONCE)),
        (1, StatusReply(request_id=1)),
        (2, Hello(nonce=CLIENT_NONCE)),
        (2, StatusRequest(request_id=1)),
    ],
)
def test_Connection_server_cannot_send_out_of_phase(step: int, msg: Message) -> None:
    """A server refuses to send what its phase or its side does not allow."""
    conn = connection_at(Side.SERVER, step)
    phase = conn.phase
    with pytest.raises(LocalProtocolError, match="server cannot send"):
        conn.send(msg)
    assert conn.phase is phase


@pytest.mark.parametrize(
    ("step", "msg"),
    [
        (0, Proof(proof=SOME_PROOF)),
        (1, Hello(nonce=CLIENT_NONCE)),
        (2, Hello(nonce=CLIENT_NONCE)),
        (2, ReadReply(request_id=1)),
        (2, ErrorReply(request_id=1)),
    ],
)
def test_Connection_client_cannot_send_out_of_phase(step: int, msg: Message) -> None:
    """A client refuses to send what its phase or its side does not allow."""
    conn = connection_at(Side.CLIENT, step)
    with pytest.raises(LocalProtocolError, match="client cannot send"):
        conn.send(msg)


@pytest.mark.parametrize("step", [0, 1])
def test_Connection_server_error_during_handshake_closes(step: int) -> None:
    """A server that sends an error frame before WELCOME is closed, and may send no more."""
    conn = connection_at(Side.SERVER, step)
    assert conn.send(ErrorReply(code=43, message="no")) == frame(KIND_ERROR, b"\x00\x2bno")
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is CLOSED
    with pytest.raises(LocalProtocolError, match="closed connection"):
        conn.send(Welcome(name="x"))


def test_Connection_server_may_send_an_error_after_a_protocol_error() -> None:
    """A server closed by a bad frame can still send the error frame that explains it."""
    conn = Connection(Side.SERVER)
    conn.receive_data(encode(StatusRequest(request_id=1)))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    data = conn.send(ErrorReply(code=info.value.code, message=str(info.value)))
    assert data[4] == KIND_ERROR
    assert conn.phase is Phase.CLOSED


@pytest.mark.parametrize(
    "msg",
    [
        Hello(nonce=b"short"),
        Challenge(name="x", nonce=b"short"),
        Welcome(name="x", proof=b"short"),
        Proof(proof=b"short"),
        Hello(nonce=CLIENT_NONCE, name="x" * (NAME_SIZE_MAX_BYTES + 1)),
        Welcome(name="é" * 128),
    ],
    ids=["hello-nonce", "challenge-nonce", "welcome-proof", "proof", "hello-name", "name"],
)
def test_encode_refuses_fields_of_the_wrong_size(msg: Message) -> None:
    """A nonce, proof or name of the wrong size is refused instead of padded or cut."""
    with pytest.raises(LocalProtocolError, match=r"wrong size|longer than 255"):
        encode(msg)


def test_encode_refuses_the_bare_message_base() -> None:
    """The Message base class has no frame kind of its own and cannot be encoded."""
    with pytest.raises(LocalProtocolError, match="cannot encode Message"):
        encode(Message())


def test_sentinels_repr() -> None:
    """NEED_DATA and CLOSED show their names."""
    assert (repr(NEED_DATA), repr(CLOSED)) == ("NEED_DATA", "CLOSED")


def test_Connection_failed_send_changes_no_phase() -> None:
    """A message that cannot be encoded leaves the phase as it was, so a good one can follow."""
    conn = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError, match="wrong size"):
        conn.send(Hello(name=CLIENT_NAME, nonce=b"short"))
    assert conn.phase is Phase.HELLO
    conn.send(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
    assert conn.phase is Phase.PROOF


# Versions.


def test_Connection_server_refuses_hello_of_another_version() -> None:
    """A HELLO of version 1 (before the client proved first) raises VersionMismatch naming
    both versions."""
    conn = Connection(Side.SERVER)
    conn.receive_data(frame(KIND_HELLO, hello_body(version=1)))
    with pytest.raises(VersionMismatch) as info:
        conn.next_event()
    assert "version 1" in str(info.value)
    assert f"version {PROTOCOL_VERSION}" in str(info.value)
    assert conn.phase is Phase.CLOSED


def test_Connection_server_reads_only_the_version_of_a_future_hello() -> None:
    """A future HELLO is told apart by its first two bytes, whatever layout follows."""
    conn = Connection(Side.SERVER)
    conn.receive_data(frame(KIND_HELLO, b"\x00\x07"))
    with pytest.raises(VersionMismatch, match=r"version 7.*version 2"):
        conn.next_event()


def test_Connection_client_refuses_challenge_of_another_version() -> None:
    """A CHALLENGE of version 3 raises VersionMismatch naming both versions."""
    conn = Connection(Side.CLIENT)
    conn.send(Hello(nonce=CLIENT_NONCE))
    conn.receive_data(frame(KIND_CHALLENGE, b"\x00\x03" + SERVER_NONCE + name_bytes("x")))
    with pytest.raises(VersionMismatch, match=r"version 3.*version 2"):
        conn.next_event()


# Limits.


def test_Connection_refuses_an_oversize_frame_on_its_header() -> None:
    """A frame length over FRAME_SIZE_MAX_BYTES is refused from its 16-byte header alone."""
    conn = connection_at(Side.SERVER, 2)
    header = struct.pack("!IBBHQ", FRAME_SIZE_MAX_BYTES + 1, KIND_WRITE, 0, 0, 1)
    conn.receive_data(header)
    with pytest.raises(RemoteProtocolError, match=f"frame length {FRAME_SIZE_MAX_BYTES + 1}"):
        conn.next_event()
    assert conn.phase is Phase.CLOSED


def test_Connection_waits_for_the_body_of_a_frame_at_the_size_limit() -> None:
    """A frame length of exactly FRAME_SIZE_MAX_BYTES is accepted and its body awaited."""
    conn = connection_at(Side.SERVER, 2)
    conn.receive_data(struct.pack("!IBBHQ", FRAME_SIZE_MAX_BYTES, KIND_WRITE, 0, 0, 1))
    assert conn.next_event() is NEED_DATA


def test_Connection_refuses_a_frame_length_shorter_than_its_header() -> None:
    """A frame length below the 12 header bytes it must count is refused."""
    conn = Connection(Side.SERVER)
    conn.receive_data(struct.pack("!IBBHQ", LENGTH_MIN - 1, KIND_HELLO, 0, 0, 0))
    with pytest.raises(RemoteProtocolError, match="frame length 11"):
        conn.next_event()


def test_Connection_waits_for_a_whole_header() -> None:
    """Fifteen bytes of a header give NEED_DATA and consume nothing."""
    conn = Connection(Side.SERVER)
    data = frame(KIND_HELLO, hello_body())
    conn.receive_data(data[:15])
    assert conn.next_event() is NEED_DATA
    assert feed(conn, data[15:]) == [Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE)]


def test_Connection_refuses_a_read_over_the_io_limit() -> None:
    """A READ of IO_SIZE_MAX_BYTES + 1 bytes is refused."""
    conn = connection_at(Side.SERVER, 2)
    conn.receive_data(frame(KIND_READ, struct.pack("!HQI", 1, 0, IO_SIZE_MAX_BYTES + 1)))
    with pytest.raises(RemoteProtocolError, match=f"read of {IO_SIZE_MAX_BYTES + 1} bytes"):
        conn.next_event()


def test_Connection_refuses_a_write_over_the_io_limit() -> None:
    """A WRITE carrying IO_SIZE_MAX_BYTES + 1 bytes is refused though its frame fits."""
    conn = connection_at(Side.SERVER, 2)
    body = struct.pack("!HQQ", 1, 0, 0) + bytes(IO_SIZE_MAX_BYTES + 1)
    conn.receive_data(frame(KIND_WRITE, body))
    with pytest.raises(RemoteProtocolError, match=f"write of {IO_SIZE_MAX_BYTES + 1} bytes"):
        conn.next_event()


def test_encode_io_limits() -> None:
    """A write of IO_SIZE_MAX_BYTES encodes; one byte more, or an oversize frame, is refused."""
    largest = WriteRequest(request_id=1, device=1, data=bytes(IO_SIZE_MAX_BYTES))
    assert decode(largest, encode(largest)) == largest
    with pytest.raises(LocalProtocolError, match="cannot write more than"):
        encode(WriteRequest(device=1, data=bytes(IO_SIZE_MAX_BYTES + 1)))
    with pytest.raises(LocalProtocolError, match="frame over"):
        encode(ReadReply(data=bytes(FRAME_SIZE_MAX_BYTES - LENGTH_MIN + 1)))
    largest_reply = ReadReply(data=bytes(FRAME_SIZE_MAX_BYTES - LENGTH_MIN))
    assert len(encode(largest_reply)) == 4 + FRAME_SIZE_MAX_BYTES


def test_Connection_refuses_oversize_text() -> None:
    """Text of TEXT_SIZE_MAX_BYTES + 1 bytes is refused in an error frame."""
    conn = connection_at(Side.CLIENT, 2)
    conn.receive_data(frame(KIND_ERROR, b"\x00\x01" + b" " * (TEXT_SIZE_MAX_BYTES + 1)))
    with pytest.raises(RemoteProtocolError, match=f"text of {TEXT_SIZE_MAX_BYTES + 1} bytes"):
        conn.next_event()


def _event_body(fields_bytes: bytes, *, kind: int = 0) -> bytes:
    return struct.pack("!QQIB", 1, 2, 3, kind) + fields_bytes


def test_Connection_takes_an_event_of_EVENT_SIZE_MAX_BYTES_and_refuses_one_more() -> None:
    """An event whose fields are EVENT_SIZE_MAX_BYTES is taken; one byte more is refused."""
    filler = b'{"text":"' + b"x" * (EVENT_SIZE_MAX_BYTES - 11) + b'"}'
    assert len(filler) == EVENT_SIZE_MAX_BYTES
    event = Event(kind=EventKind.STATE, seq=1, time_ns=2, serial=3, text="x" * (len(filler) - 11))
    assert decode(EventNotice(), frame(KIND_EVENT, _event_body(filler))) == EventNotice(event=event)
    conn = connection_at(Side.CLIENT, 2)
    conn.receive_data(frame(KIND_EVENT, _event_body(filler + b" ")))
    with pytest.raises(RemoteProtocolError, match=f"event of {EVENT_SIZE_MAX_BYTES + 1} bytes"):
        conn.next_event()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_event_body(b'{"text":1}'), "event field text must be a string"),
        (_event_body(b'{"device":["x"]}'), "event field device must be a string"),
        (_event_body(b'{"old":"BROKEN"}'), "event field old must be a pair state"),
        (_event_body(b'{"at_ns":-1}'), "event field at_ns must be a whole number"),
        (_event_body(b'{"at_ns":true}'), "event field at_ns must be a whole number"),
        (_event_body(b'{"detail":{"a":[1]}}'), "event detail must be an object"),
        (_event_body(b'{"detail":[]}'), "event detail must be an object"),
        (_event_body(b"[]"), "expected a JSON object"),
        (_event_body(b"{}", kind=200), "unknown event kind 200"),
    ],
)
def test_Connection_refuses_an_event_with_a_field_of_the_wrong_type(
    body: bytes, message: str
) -> None:
    """An event frame whose fields do not have their types is refused, naming the field."""
    conn = connection_at(Side.CLIENT, 2)
    conn.receive_data(frame(KIND_EVENT, body))
    with pytest.raises(RemoteProtocolError, match=message):
        conn.next_event()


def test_Connection_ignores_event_fields_it_does_not_know() -> None:
    """Fields a newer controller may add are ignored; the known ones are read."""
    body = _event_body(b'{"device":"d","later":{"x":1},"text":"t"}', kind=1)
    got = decode(EventNotice(), frame(KIND_EVENT, body))
    assert got == EventNotice(
        event=Event(kind=EventKind.HOLD, seq=1, time_ns=2, serial=3, device="d", text="t")
    )


@pytest.mark.parametrize(("kind", "side"), [(20, Side.SERVER), (21, Side.CLIENT)])
def test_Connection_refuses_the_retired_free_text_event_kinds(kind: int, side: Side) -> None:
    """Kinds 20 and 21 (free-text events) are retired: a frame of either is refused."""
    conn = connection_at(side, 2)
    conn.receive_data(frame(kind))
    with pytest.raises(RemoteProtocolError, match=f"frame kind {kind} is not allowed"):
        conn.next_event()


def test_Connection_refuses_an_oversize_name() -> None:
    """A HELLO whose name claims 256 bytes is refused; 255 bytes is accepted."""
    longest = "n" * NAME_SIZE_MAX_BYTES
    hello = Hello(name=longest, nonce=CLIENT_NONCE)
    assert decode(hello, frame(KIND_HELLO, hello_body(name=longest))) == hello
    conn = Connection(Side.SERVER)
    conn.receive_data(frame(KIND_HELLO, hello_body(name="n" * (NAME_SIZE_MAX_BYTES + 1))))
    with pytest.raises(RemoteProtocolError, match="text of 256 bytes is over the limit of 255"):
        conn.next_event()


def test_encode_truncates_long_text_on_a_character_boundary() -> None:
    """An over-long error message is cut to the limit without splitting a UTF-8 character."""
    message = "a" + "é" * TEXT_SIZE_MAX_BYTES
    decoded = decode(ErrorReply(), encode(ErrorReply(code=1, message=message)))
    assert isinstance(decoded, ErrorReply)
    assert message.startswith(decoded.message)
    assert TEXT_SIZE_MAX_BYTES - 1 <= len(decoded.message.encode()) <= TEXT_SIZE_MAX_BYTES


def test_encode_refuses_an_oversize_status_document() -> None:
    """A status document over DOCUMENT_SIZE_MAX_BYTES is refused rather than cut into bad JSON."""
    with pytest.raises(LocalProtocolError, match="JSON document over"):
        encode(StatusReply(document={"pad": "x" * DOCUMENT_SIZE_MAX_BYTES}))


def test_devices_limit() -> None:
    """A device list of DEVICES_MAX encodes; one more is refused on both sides."""
    devices = tuple(range(DEVICES_MAX))
    msg = QueryRequest(request_id=1, devices=devices)
    assert decode(msg, encode(msg)) == msg
    with pytest.raises(LocalProtocolError, match=f"more than {DEVICES_MAX} devices"):
        encode(QueryRequest(devices=(*devices, 0)))
    conn = connection_at(Side.SERVER, 2)
    conn.receive_data(frame(KIND_QUERY, bytes(2 * (DEVICES_MAX + 1))))
    with pytest.raises(RemoteProtocolError, match=f"device list of {DEVICES_MAX + 1}"):
        conn.next_event()


MALFORMED = [
    (Side.SERVER, 0, frame(KIND_HELLO, b"\x00"), "malformed"),
    (Side.SERVER, 0, frame(KIND_HELLO, hello_body(role=3)), "malformed"),
    (Side.SERVER, 0, frame(KIND_HELLO, hello_body() + b"!"), "1 unexpected trailing bytes"),
    (Side.SERVER, 0, frame(KIND_HELLO, hello_body()[:-2]), "runs past the end"),
    (
        Side.SERVER,
        0,
        frame(KIND_HELLO, struct.pack("!HB", PROTOCOL_VERSION, 1) + CLIENT_NONCE + b"\x00\x01\xff"),
        "malformed",
    ),
    (Side.SERVER, 1, frame(KIND_PROOF, SOME_PROOF[:-1]), "proof must be 32 bytes"),
    (Side.SERVER, 2, frame(KIND_IDENTIFY, b"\x00"), "odd number of bytes"),
    (Side.SERVER, 2, frame(KIND_READ, b"\x00" * 13), "malformed"),
    (Side.SERVER, 2, frame(KIND_WRITE, b"\x00" * 17), "malformed"),
    (Side.SERVER, 2, frame(KIND_STATUS, b"\x00"), "1 unexpected trailing bytes"),
    (Side.SERVER, 2, frame(KIND_SUBSCRIBE, b"\x00"), "malformed"),
    (Side.SERVER, 2, frame(KIND_SUBSCRIBE, b"\x00" * 10), "1 unexpected trailing bytes"),
    (Side.SERVER, 2, frame(KIND_SUBSCRIBE, b"\x02" + b"\x00" * 8), "replay must be 0 or 1"),
    (Side.CLIENT, 1, frame(KIND_WELCOME, b"\x00\x00\x00"), "malformed"),
    (Side.CLIENT, 1, frame(KIND_ERROR, b"\x00\x01\xff"), "malformed"),
    (Side.CLIENT, 2, frame(KIND_IDENTIFY_REPLY, IDENTITY_BYTES[:-1]), "whole number of records"),
    (
        Side.CLIENT,
        2,
        frame(KIND_IDENTIFY_REPLY, IDENTITY_BYTES[:22] + b"\x06" + IDENTITY_BYTES[23:]),
        "malformed",
    ),
    (Side.CLIENT, 2, frame(KIND_IDENTIFY_REPLY, IDENTITY_BYTES[:-6] + b"\xff" * 6), "malformed"),
    (
        Side.CLIENT,
        2,
        frame(KIND_QUERY_REPLY, STATUS_BYTES[:4] + b"\x06" + STATUS_BYTES[5:]),
        "malformed",
    ),
    (
        Side.CLIENT,
        2,
        frame(KIND_QUERY_REPLY, STATUS_BYTES[:5] + b"\x03" + STATUS_BYTES[6:]),
        "malformed",
    ),
    (
        Side.CLIENT,
        2,
        frame(KIND_QUERY_REPLY, STATUS_BYTES[:6] + b"\x04" + STATUS_BYTES[7:]),
        "malformed",
    ),
    (
        Side.CLIENT,
        2,
        frame(KIND_QUERY_REPLY, STATUS_BYTES[:54] + b"\x02" + STATUS_BYTES[55:]),
        "malformed",
    ),
    (Side.CLIENT, 2, frame(KIND_QUERY_REPLY, STATUS_BYTES[:60]), "record cut short"),
    (Side.CLIENT, 2, frame(KIND_QUERY_REPLY, STATUS_BYTES[:-1]), "cause cut short"),
    (Side.CLIENT, 2, frame(KIND_WRITE_REPLY, b"\x00"), "1 unexpected trailing bytes"),
    (Side.CLIENT, 2, frame(KIND_FLUSH_REPLY, b"\x00"), "1 unexpected trailing bytes"),
    (Side.CLIENT, 2, frame(KIND_EVENT, b"\xc3"), "malformed"),
    (Side.CLIENT, 2, frame(KIND_STATUS_REPLY, b"[1]"), "expected a JSON object"),
    (Side.CLIENT, 2, frame(KIND_STATUS_REPLY, b"{"), "malformed"),
    (Side.CLIENT, 2, frame(KIND_STATUS_REPLY, b"[" * 50_000), "malformed"),
    (Side.CLIENT, 2, frame(KIND_STATUS_REPLY, b"9" * 5000), "malformed"),
    (Side.CLIENT, 2, frame(99), "not allowed"),
    (Side.SERVER, 2, frame(0), "not allowed"),
]


@pytest.mark.parametrize(("side", "step", "data", "match"), MALFORMED)
def test_Connection_refuses_malformed_frames(
    side: Side, step: int, data: bytes, match: str
) -> None:
    """A malformed body raises RemoteProtocolError and closes the connection."""
    conn = connection_at(side, step)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is CLOSED


def test_Connection_ignores_unknown_flags_and_reserved_bits() -> None:
    """Flags other than FUA, and the reserved field, are ignored on receipt."""
    conn = connection_at(Side.SERVER, 2)
    body = struct.pack("!HQQ", 1, 0, 0) + b"x"
    data = struct.pack("!IBBHQ", LENGTH_MIN + len(body), KIND_WRITE, 0xFE, 0xBEEF, 3) + body
    assert feed(conn, data) == [WriteRequest(request_id=3, device=1, data=b"x")]


# End of file.


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
@pytest.mark.parametrize("step", ANY_PHASE_STEPS)
def test_Connection_eof_on_a_frame_boundary_is_closed(side: Side, step: int) -> None:
    """EOF with nothing buffered gives CLOSED, and CLOSED again after that."""
    conn = connection_at(side, step)
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED
    assert conn.phase is Phase.CLOSED


def test_Connection_eof_after_whole_frames_delivers_them_first() -> None:
    """Frames received before EOF are delivered, then CLOSED."""
    conn = connection_at(Side.SERVER, 2)
    conn.receive_data(encode(StatusRequest(request_id=1)) + encode(FlushRequest(request_id=2)))
    conn.receive_data(b"")
    assert conn.next_event() == StatusRequest(request_id=1)
    assert conn.next_event() == FlushRequest(request_id=2)
    assert conn.next_event() is CLOSED


@pytest.mark.parametrize("cut", [1, 4, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 5])
def test_Connection_eof_inside_a_frame_is_a_protocol_error(cut: int) -> None:
    """EOF inside a header or a body raises RemoteProtocolError naming the bytes left."""
    conn = connection_at(Side.SERVER, 2)
    conn.receive_data(encode(WriteRequest(request_id=1, device=1, data=b"0123456789"))[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=f"closed inside a frame \\({cut} bytes left"):
        conn.next_event()
    assert conn.next_event() is CLOSED


def test_Connection_refuses_data_after_eof() -> None:
    """Bytes fed after EOF are our own mistake."""
    conn = Connection(Side.SERVER)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after end of file"):
        conn.receive_data(b"x")


# Hypothesis: round trips, splits and garbage.

request_ids = st.integers(min_value=0, max_value=U64_MAX)
u8s = st.integers(min_value=0, max_value=0xFF)
u16s = st.integers(min_value=0, max_value=U16_MAX)
u32s = st.integers(min_value=0, max_value=U32_MAX)
u64s = st.integers(min_value=0, max_value=U64_MAX)
nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
proofs = st.binary(min_size=PROOF_BYTES, max_size=PROOF_BYTES)
names = st.text().map(lambda s: s.encode()[:NAME_SIZE_MAX_BYTES].decode("utf-8", "ignore"))
texts = st.text(max_size=300)
device_lists = st.lists(u16s, max_size=40).map(tuple)
payloads = st.binary(max_size=2048)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=U64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

device_identities = st.builds(
    DeviceIdentity,
    device=u16s,
    status=u16s,
    ssid=u16s,
    serial=u32s,
    capacity_bytes=u64s,
    track_size_bytes=u32s,
    state=st.sampled_from(PairState),
    role=st.sampled_from(PairRole),
    volser=st.text(alphabet=VOLSER_ALPHABET, max_size=6),
)
device_statuses = st.builds(
    DeviceStatus,
    device=u16s,
    status=u16s,
    state=st.sampled_from(PairState),
    role=st.sampled_from(PairRole),
    mode=st.sampled_from([None, *CopyMode]),
    flags=u8s,
    suspend_at_ns=u64s,
    dirty_tracks=u64s,
    lag_bytes=u64s,
    lag_ns=u64s,
    peer_serial=u32s,
    peer_device=u16s,
    copy_left_tracks=u64s,
    fence=st.sampled_from(FencePolicy),
    consistency_group=st.booleans(),
    tracks=u64s,
    changed_at_ns=u64s,
    change_cause=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", max_size=40),
)

hellos = st.builds(
    Hello, request_id=request_ids, role=st.sampled_from(PeerRole), name=names, nonce=nonces
)
challenges = st.builds(Challenge, request_id=request_ids, name=names, nonce=nonces)
proof_messages = st.builds(Proof, request_id=request_ids, proof=proofs)
welcomes = st.builds(Welcome, request_id=request_ids, serial=u32s, name=names, proof=proofs)
error_replies = st.builds(ErrorReply, request_id=request_ids, code=u16s, message=texts)
identify_requests = st.builds(IdentifyRequest, request_id=request_ids, devices=device_lists)
identify_replies = st.builds(
    IdentifyReply,
    request_id=request_ids,
    identities=st.lists(device_identities, max_size=5).map(tuple),
)
read_requests = st.builds(
    ReadRequest,
    request_id=request_ids,
    device=u16s,
    offset=u64s,
    length=st.integers(min_value=0, max_value=IO_SIZE_MAX_BYTES),
)
read_replies = st.builds(ReadReply, request_id=request_ids, data=payloads)
write_requests = st.builds(
    WriteRequest,
    request_id=request_ids,
    device=u16s,
    offset=u64s,
    timestamp_ns=u64s,
    fua=st.booleans(),
    data=payloads,
)
write_replies = st.builds(WriteReply, request_id=request_ids)
flush_requests = st.builds(FlushRequest, request_id=request_ids, devices=device_lists)
flush_replies = st.builds(FlushReply, request_id=request_ids)
query_requests = st.builds(QueryRequest, request_id=request_ids, devices=device_lists)
query_replies = st.builds(
    QueryReply, request_id=request_ids, statuses=st.lists(device_statuses, max_size=5).map(tuple)
)
subscribe_requests = st.builds(
    SubscribeRequest, request_id=request_ids, replay=st.booleans(), after_seq=u64s
)
events = st.builds(
    Event,
    kind=st.sampled_from(EventKind),
    seq=u64s,
    serial=u32s,
    controller=names,
    time_ns=u64s,
    text=texts,
    device=names,
    old=st.none() | st.sampled_from(PairState),
    new=st.none() | st.sampled_from(PairState),
    cause=names,
    at_ns=u64s,
    group=names,
    peer=names,
    detail=st.dictionaries(
        st.text(max_size=10),
        st.booleans()
        | st.integers(min_value=-(2**63), max_value=U64_MAX)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        max_size=4,
    ),
)
event_notices = st.builds(EventNotice, request_id=request_ids, event=events)
status_requests = st.builds(StatusRequest, request_id=request_ids)
status_replies = st.builds(
    StatusReply,
    request_id=request_ids,
    document=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)

handshake_messages = st.one_of(hellos, challenges, proof_messages, welcomes)
requests = st.one_of(
    identify_requests,
    read_requests,
    write_requests,
    flush_requests,
    query_requests,
    subscribe_requests,
    status_requests,
)
replies = st.one_of(
    error_replies,
    identify_replies,
    read_replies,
    write_replies,
    flush_replies,
    query_replies,
    event_notices,
    status_replies,
)
messages = st.one_of(handshake_messages, requests, replies)


@given(msg=messages)
def test_encode_round_trips_every_message(msg: Message) -> None:
    """decode(encode(m)) == m for every message with fields in the protocol's ranges."""
    assert decode(msg, encode(msg)) == msg


@given(msg=messages)
def test_encode_length_counts_the_rest_of_the_frame(msg: Message) -> None:
    """The length field counts every byte after itself, and the kind byte is the class's."""
    data = encode(msg)
    assert struct.unpack_from("!I", data)[0] == len(data) - 4
    assert data[4] == msg.KIND
    assert struct.unpack_from("!HQ", data, 6) == (0, msg.request_id)


@st.composite
def streams(draw: st.DrawFn) -> tuple[Side, list[Message], bytes, list[int]]:
    """A ready receiver's side, messages for it, their bytes, and cut points in them."""
    side = draw(st.sampled_from(Side))
    items = draw(st.lists(requests if side is Side.SERVER else replies, max_size=8))
    data = b"".join(encode(m) for m in items)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)))
    return side, items, data, cuts


@given(stream=streams())
def test_Connection_decodes_a_stream_split_anywhere(
    stream: tuple[Side, list[Message], bytes, list[int]],
) -> None:
    """A valid byte stream fed in arbitrary pieces yields the same messages, then CLOSED."""
    side, items, data, cuts = stream
    conn = connection_at(side, 2)
    received: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        if end > start:  # an empty piece would mean EOF
            received += feed(conn, data[start:end])
    assert received == items
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


@given(hello=hellos, proof=proof_messages, data=st.data())
def test_Connection_server_decodes_a_handshake_split_anywhere(
    hello: Hello, proof: Proof, data: st.DataObject
) -> None:
    """HELLO and PROOF written together and split anywhere reach a server one turn at a time."""
    stream = encode(hello) + encode(proof)
    cut = data.draw(st.integers(min_value=1, max_value=len(stream) - 1))
    server = Connection(Side.SERVER)
    server.receive_data(stream[:cut])
    first = server.next_event()
    if first is NEED_DATA:
        assert cut < len(encode(hello))
        server.receive_data(stream[cut:])
        first = server.next_event()
    else:
        server.receive_data(stream[cut:])
    assert first == hello
    server.send(Challenge(name=SERVER_NAME, nonce=SERVER_NONCE))
    assert drain(server) == [proof]


def _frames(kind: int, body: bytes, flags: int, request_id: int) -> bytes:
    return frame(kind, body, flags=flags, request_id=request_id)


plausible_frames = st.builds(
    _frames,
    kind=st.sampled_from([0, 6, 9, 24, 255, *range(1, 6), *range(10, 24)]),
    body=st.binary(max_size=96),
    flags=u8s,
    request_id=request_ids,
)
garbage_chunks = st.lists(
    st.one_of(st.binary(min_size=1, max_size=64), plausible_frames, messages.map(encode)),
    max_size=8,
)


@settings(max_examples=300)
@given(side=st.sampled_from(Side), step=st.sampled_from(ANY_PHASE_STEPS), chunks=garbage_chunks)
def test_Connection_survives_garbage(side: Side, step: int, chunks: list[bytes]) -> None:
    """Arbitrary bytes yield only messages, NEED_DATA, CLOSED or a ProtocolError, and settle."""
    conn = connection_at(side, step)
    failed = False
    for chunk in [*chunks, b""]:
        if failed:
            break
        conn.receive_data(chunk)
        for _ in range(len(chunk) + 2):
            try:
                event = conn.next_event()
            except ProtocolError:
                failed = True
                assert conn.phase is Phase.CLOSED
                assert conn.next_event() is CLOSED
                break
            if event is NEED_DATA or event is CLOSED:
                break
            assert isinstance(event, Message)
        else:
            raise AssertionError(f"next_event did not settle within {len(chunk) + 2} calls")


# Receiving in place (get_buffer / buffer_updated) and sending in parts (send_parts).


def read_into(conn: Connection, data: bytes, *, read_max: int | None = None) -> list[Message]:
    """Feed `data` as a BufferedProtocol transport does: each read fills get_buffer's view."""
    messages: list[Message] = []
    at = 0
    while at < len(data):
        view = conn.get_buffer(-1)
        assert len(view) >= RECEIVE_ROOM_MIN_BYTES
        size = min(len(view), len(data) - at, read_max or len(view))
        view[:size] = data[at : at + size]
        conn.buffer_updated(size)
        at += size
        messages += drain(conn)
    return messages


@given(stream=streams(), read_max=st.integers(min_value=1, max_value=3000))
def test_Connection_decodes_a_stream_read_into_its_buffer(
    stream: tuple[Side, list[Message], bytes, list[int]], read_max: int
) -> None:
    """A valid byte stream read in place, in reads of any size, yields the same messages."""
    side, items, data, _cuts = stream
    conn = connection_at(side, 2)
    assert read_into(conn, data, read_max=read_max) == items
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_Connection_get_buffer_grows_with_a_large_frame_as_its_bytes_arrive() -> None:
    """A large frame read in full reads: the room at least doubles what of it arrived each
    time (a few reads for 4 MiB), but never runs ahead of the bytes by more than that."""
    conn = connection_at(Side.SERVER, 2)
    msg = WriteRequest(request_id=1, device=1, data=bytes(range(256)) * (16 * 1024))  # 4 MiB
    data = encode(msg)
    at, reads = 0, 0
    while at < len(data):
        view = conn.get_buffer()
        assert len(view) <= max(RECEIVE_ROOM_MIN_BYTES, at) + RECEIVE_BUFFER_START_BYTES
        size = min(len(view), len(data) - at)
        view[:size] = data[at : at + size]
        conn.buffer_updated(size)
        at, reads = at + size, reads + 1
        assert drain(conn) == ([msg] if at == len(data) else [])
    assert reads <= 8


def test_Connection_refuses_a_large_frame_before_authentication() -> None:
    """Before WELCOME a frame may claim at most HANDSHAKE_FRAME_MAX_BYTES: refused at its
    header, and the buffer offered for it stays small."""
    conn = Connection(Side.SERVER)
    header = struct.pack("!IBBHQ", FRAME_SIZE_MAX_BYTES, WriteRequest.KIND, 0, 0, 1)
    view = conn.get_buffer()
    view[: len(header)] = header
    conn.buffer_updated(len(header))
    assert len(conn.get_buffer()) <= RECEIVE_BUFFER_START_BYTES
    with pytest.raises(RemoteProtocolError, match="before authentication"):
        conn.next_event()


def test_Connection_buffer_stays_bounded_in_a_stream_of_writes() -> None:
    """Reads that fill the buffer grow it to RECEIVE_BUFFER_BYTES and no further."""
    conn = connection_at(Side.SERVER, 2)
    msg = WriteRequest(request_id=1, device=1, data=b"w" * 65536)
    data = encode(msg) * 100
    capacities: list[int] = []
    received: list[Message] = []
    at = 0
    while at < len(data):
        view = conn.get_buffer()
        capacities.append(len(view) + conn.buffered_bytes)
        size = min(len(view), len(data) - at)
        view[:size] = data[at : at + size]
        conn.buffer_updated(size)
        at += size
        received += drain(conn)
    assert received == [msg] * 100
    assert max(capacities) == RECEIVE_BUFFER_BYTES


def test_Connection_decoded_payloads_are_bytes_of_their_own() -> None:
    """Payloads are copied out of the receive buffer: reusing the buffer changes none."""
    server = connection_at(Side.SERVER, 2)
    write = WriteRequest(request_id=1, device=1, data=b"a" * 70000)
    batch = UpdateBatch(
        request_id=2,
        updates=(
            Update(device=1, timestamp_ns=1, offset=0, data=b"b" * 5000),
            Update(device=2, timestamp_ns=2, offset=8, data=b"c" * 10),
        ),
    )
    kept = read_into(server, encode(write) + encode(batch))
    client = connection_at(Side.CLIENT, 2)
    read = ReadReply(request_id=3, data=b"d" * 70000)
    pair_reply = PairOpReply(request_id=4, results=(PairResult(device=1),), data=b"e" * 3000)
    kept += read_into(client, encode(read) + encode(pair_reply))
    # Enough other bytes through both buffers to overwrite every byte they held.
    other = WriteRequest(request_id=5, device=1, data=b"z" * 70000)
    assert read_into(server, encode(other) * 40) == [other] * 40
    other_read = ReadReply(request_id=6, data=b"y" * 70000)
    assert read_into(client, encode(other_read) * 40) == [other_read] * 40
    assert kept == [write, batch, read, pair_reply]
    payloads = [write.data, *(u.data for u in batch.updates), read.data, pair_reply.data]
    kept_write, kept_batch, kept_read, kept_reply = kept
    assert isinstance(kept_write, WriteRequest)
    assert isinstance(kept_batch, UpdateBatch)
    assert isinstance(kept_read, ReadReply)
    assert isinstance(kept_reply, PairOpReply)
    decoded = [kept_write.data, *(u.data for u in kept_batch.updates), kept_read.data]
    decoded.append(kept_reply.data)
    assert decoded == payloads
    assert all(type(data) is bytes for data in decoded)


def test_Connection_receive_data_and_reads_in_place_mix() -> None:
    """Bytes handed over and bytes read in place join into one stream."""
    conn = connection_at(Side.SERVER, 2)
    first, second = StatusRequest(request_id=1), WriteRequest(request_id=2, data=b"x" * 100)
    data = encode(first) + encode(second)
    conn.receive_data(data[:20])
    assert read_into(conn, data[20:]) == [first, second]


def test_Connection_buffer_misuse_is_our_bug() -> None:
    """Reporting more bytes than were offered, or reading after EOF, is a LocalProtocolError."""
    conn = Connection(Side.SERVER)
    with pytest.raises(LocalProtocolError, match="outside the 0 bytes offered"):
        conn.buffer_updated(1)
    view = conn.get_buffer()
    with pytest.raises(LocalProtocolError, match="buffer_updated"):
        conn.buffer_updated(len(view) + 1)
    conn.buffer_updated(0)  # a read that found nothing
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after end of file"):
        conn.get_buffer()
    assert conn.next_event() is CLOSED


def test_send_parts_joins_to_the_frame_and_leaves_payloads_uncopied() -> None:
    """A write is its header and fields in one part and its data, the same object, in another."""
    pair = ready_pair()
    data = bytes(range(256)) * 256
    msg = WriteRequest(request_id=1, device=1, offset=4096, timestamp_ns=7, data=data)
    parts = pair.client.send_parts(msg)
    assert b"".join(parts) == encode(msg)
    assert len(parts) == 2
    assert parts[1] is data
    assert parts[0] == encode(msg)[: HEADER_BYTES + 18]
    reply = ReadReply(request_id=2, data=data)
    assert pair.server.send_parts(reply) == [encode(reply)[:HEADER_BYTES], data]
    assert pair.server.send_parts(reply)[1] is data


def test_send_parts_joins_small_frames_into_one_part() -> None:
    """A frame without a large payload is one part, byte for byte the frame."""
    pair = ready_pair()
    assert pair.client.send_parts(StatusRequest(request_id=2)) == [frame(KIND_STATUS, request_id=2)]
    small = WriteRequest(request_id=3, device=1, data=b"s" * 100)
    assert pair.client.send_parts(small) == [encode(small)]


def test_send_parts_of_an_update_batch_keep_each_large_payload_apart() -> None:
    """Large update payloads are parts of their own; small ones join the fields around them."""
    pair = ready_pair()
    big, small, bigger = b"B" * 4096, b"s" * 10, b"G" * 65536
    batch = UpdateBatch(
        request_id=4,
        updates=(
            Update(device=1, timestamp_ns=1, offset=0, data=big),
            Update(device=1, timestamp_ns=2, offset=0, data=small),
            Update(device=1, timestamp_ns=3, offset=0, data=bigger),
        ),
    )
    parts = pair.client.send_parts(batch)
    assert b"".join(parts) == encode(batch)
    assert len(parts) == 4
    assert parts[1] is big
    assert parts[3] is bigger
    assert small in parts[2]


def test_send_parts_copies_a_payload_that_is_not_bytes() -> None:
    """A transport may hold a part until the socket takes it: a mutable payload is copied."""
    pair = ready_pair()
    data = bytearray(b"m" * 4096)
    parts = pair.client.send_parts(WriteRequest(request_id=1, data=data))  # type: ignore[arg-type]
    data[0:1] = b"X"
    assert type(parts[1]) is bytes
    assert parts[1] == b"m" * 4096


def test_send_parts_checks_the_phase_like_send() -> None:
    """send_parts refuses out of phase, and changes the phase as send does."""
    conn = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError):
        conn.send_parts(StatusRequest(request_id=1))
    assert conn.phase is Phase.HELLO
    conn.send_parts(Hello(name=CLIENT_NAME, nonce=CLIENT_NONCE))
    assert conn.phase is Phase.PROOF


updates = st.builds(
    Update,
    device=u16s,
    timestamp_ns=u64s,
    offset=u64s,
    data=st.binary(max_size=5000),
    flags=u8s,
)
update_batches = st.builds(
    UpdateBatch, request_id=request_ids, updates=st.lists(updates, max_size=6).map(tuple)
)
pair_items = st.builds(
    PairItem,
    device=u16s,
    peer_serial=u32s,
    peer_device=u16s,
    mode=st.sampled_from([None, *CopyMode]),
    fence=st.sampled_from(FencePolicy),
    consistency_group=st.booleans(),
    size_bytes=u64s,
)
pair_op_requests = st.builds(
    PairOpRequest,
    request_id=request_ids,
    op=st.sampled_from(PairOp),
    at_ns=u64s,
    items=st.lists(pair_items, max_size=4).map(tuple),
    options=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
pair_results = st.builds(
    PairResult,
    device=u16s,
    code=u16s,
    state=st.sampled_from(PairState),
    role=st.sampled_from(PairRole),
    at_ns=u64s,
    tracks=u64s,
    message=texts,
)
pair_op_replies = st.builds(
    PairOpReply,
    request_id=request_ids,
    results=st.lists(pair_results, max_size=4, unique_by=lambda r: r.device).map(tuple),
    document=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    data=st.binary(max_size=5000),
)
update_acks = st.builds(UpdateAck, request_id=request_ids, applied=u32s)


@given(msg=st.one_of(update_batches, pair_op_requests))
def test_replication_requests_round_trip_in_parts(msg: Message) -> None:
    """Update batches and pair operations, sent in parts and read in place, decode unchanged."""
    parts = connection_at(Side.CLIENT, 2).send_parts(msg)
    assert read_into(connection_at(Side.SERVER, 2), b"".join(parts)) == [msg]


@given(msg=pair_op_requests)
def test_pair_items_packed_ahead_go_out_the_same(msg: PairOpRequest) -> None:
    """A request whose items were packed ahead (a suspend packs before it chooses T) is the
    same bytes as one packed when sent; packed items that do not match are refused."""
    ahead = dataclasses.replace(msg, packed=pack_items(msg.items))
    assert encode(ahead) == encode(msg)
    assert read_into(connection_at(Side.SERVER, 2), encode(ahead)) == [msg]
    if msg.items:
        longer = dataclasses.replace(msg, packed=pack_items(msg.items + msg.items[:1]))
        with pytest.raises(ValueError, match="packed items hold"):
            encode(longer)


def test_a_watermark_and_a_consistency_time_round_trip() -> None:
    """A primary's watermark W (kind 30), and C in a device's QUERY answer."""
    watermark = Watermark(request_id=7, watermark_ns=(1 << 63) - 5)
    reply = QueryReply(statuses=(DeviceStatus(device=3, consistency_time_ns=1 << 62),))
    assert decode(reply, encode(reply)) == reply
    parts = connection_at(Side.CLIENT, 2).send_parts(watermark)
    assert read_into(connection_at(Side.SERVER, 2), b"".join(parts)) == [watermark]


@given(msg=st.one_of(pair_op_replies, update_acks))
def test_replication_replies_round_trip_in_parts(msg: Message) -> None:
    """Pair operation replies and update acknowledgements round trip the same way."""
    parts = connection_at(Side.SERVER, 2).send_parts(msg)
    assert read_into(connection_at(Side.CLIENT, 2), b"".join(parts)) == [msg]


# wire.auth.


def test_auth_proofs_are_sha256_sized_and_deterministic() -> None:
    """Both proofs are PROOF_SIZE_BYTES long and depend only on the secret and transcript."""
    t = transcript()
    assert len(auth.server_proof(SECRET, t)) == auth.PROOF_SIZE_BYTES == PROOF_BYTES
    assert len(auth.client_proof(SECRET, t)) == auth.PROOF_SIZE_BYTES
    assert auth.server_proof(SECRET, t) == auth.server_proof(SECRET, transcript())
    assert auth.NONCE_SIZE_BYTES == NONCE_BYTES


def _documented_mac(label: bytes, t: auth.Transcript, *nonces: bytes) -> bytes:
    fields = [label, str(t.role).encode(), t.client.encode(), t.server.encode(), *nonces]
    message = b"".join(struct.pack("!I", len(f)) + f for f in fields)
    return hmac.new(SECRET, message, hashlib.sha256).digest()


def test_auth_proofs_follow_the_documented_construction() -> None:
    """Both proofs are HMAC-SHA256 over length-prefixed label, role, names and nonces."""
    t = transcript(client="hösta", role=PeerRole.PEER)
    expected_server = _documented_mac(b"remcopy-server", t, t.client_nonce, t.server_nonce)
    expected_client = _documented_mac(b"remcopy-client", t, t.server_nonce, t.client_nonce)
    assert auth.server_proof(SECRET, t) == expected_server
    assert auth.client_proof(SECRET, t) == expected_client


def test_auth_server_proof_reflected_as_client_proof_fails() -> None:
    """A server proof sent back as the client's proof does not verify: the labels differ."""
    t = transcript()
    reflected = auth.server_proof(SECRET, t)
    assert not auth.proofs_equal(reflected, auth.client_proof(SECRET, t))


def test_auth_reflected_challenge_gives_no_client_proof() -> None:
    """Sending the server its own nonce in a second HELLO gets a proof useless on the first."""
    first = transcript()
    # The attacker opens a second connection whose client nonce is the first server nonce.
    second = transcript(client_nonce=first.server_nonce, server_nonce=first.client_nonce)
    assert not auth.proofs_equal(
        auth.server_proof(SECRET, second), auth.client_proof(SECRET, first)
    )


def test_auth_recorded_proof_fails_against_a_fresh_server_nonce() -> None:
    """A client proof recorded on one connection does not verify under a new server nonce."""
    recorded = auth.client_proof(SECRET, transcript())
    fresh = transcript(server_nonce=bytes(32))
    assert not auth.proofs_equal(recorded, auth.client_proof(SECRET, fresh))


@pytest.mark.parametrize(
    "change",
    [
        {"role": int(PeerRole.PEER)},
        {"client": "hostb"},
        {"server": "ctl-west"},
        {"client_nonce": bytes(32)},
        {"server_nonce": bytes(32)},
    ],
    ids=["role", "client", "server", "client-nonce", "server-nonce"],
)
def test_auth_proofs_differ_by_each_transcript_field(change: dict[str, Any]) -> None:
    """Changing any one field of the transcript changes both proofs."""
    base, other = transcript(), transcript(**change)
    assert auth.server_proof(SECRET, base) != auth.server_proof(SECRET, other)
    assert auth.client_proof(SECRET, base) != auth.client_proof(SECRET, other)


def test_auth_proofs_differ_by_secret() -> None:
    """A different secret gives different proofs."""
    t = transcript()
    assert auth.client_proof(SECRET, t) != auth.client_proof(SECRET + b"!", t)
    assert auth.server_proof(SECRET, t) != auth.server_proof(SECRET + b"!", t)


def test_auth_names_cannot_trade_bytes() -> None:
    """Client "a|b" at server "c" and client "a" at server "b|c" get different proofs."""
    one = transcript(client="a|b", server="c")
    two = transcript(client="a", server="b|c")
    assert auth.client_proof(SECRET, one) != auth.client_proof(SECRET, two)
    assert auth.server_proof(SECRET, one) != auth.server_proof(SECRET, two)


transcripts = st.builds(
    auth.Transcript,
    role=st.sampled_from([int(r) for r in PeerRole]),
    client=st.text(alphabet="ab|\0", max_size=4),
    server=st.text(alphabet="ab|\0", max_size=4),
    client_nonce=st.sampled_from([bytes(32), b"|" * 32, CLIENT_NONCE]),
    server_nonce=st.sampled_from([bytes(32), b"|" * 32, SERVER_NONCE]),
)


@given(one=transcripts, two=transcripts)
def test_auth_distinct_transcripts_give_distinct_proofs(
    one: auth.Transcript, two: auth.Transcript
) -> None:
    """No two distinct transcripts share a proof, and no server proof is any client proof."""
    assert auth.server_proof(SECRET, one) != auth.client_proof(SECRET, two)
    assume(one != two)
    assert auth.server_proof(SECRET, one) != auth.server_proof(SECRET, two)
    assert auth.client_proof(SECRET, one) != auth.client_proof(SECRET, two)


def test_auth_proofs_equal() -> None:
    """proofs_equal is true for equal bytes only."""
    assert auth.proofs_equal(SOME_PROOF, bytes(SOME_PROOF))
    assert not auth.proofs_equal(SOME_PROOF, SOME_PROOF[:-1] + b"\0")
    assert not auth.proofs_equal(SOME_PROOF, SOME_PROOF[:-1])


def test_NonceLedger_remembers_and_evicts_the_oldest() -> None:
    """A ledger full at size_max evicts its oldest nonce to remember a new one."""
    ledger = auth.NonceLedger(size_max=3)
    for nonce in (b"a", b"b", b"c"):
        ledger.add(nonce)
    assert len(ledger) == 3
    assert all(n in ledger for n in (b"a", b"b", b"c"))
    ledger.add(b"d")
    assert len(ledger) == 3
    assert b"a" not in ledger
    assert all(n in ledger for n in (b"b", b"c", b"d"))


def test_NonceLedger_readding_refreshes_a_nonce() -> None:
    """A nonce seen again becomes the newest, so the next eviction takes another."""
    ledger = auth.NonceLedger(size_max=3)
    for nonce in (b"a", b"b", b"c", b"a", b"d"):
        ledger.add(nonce)
    assert len(ledger) == 3
    assert b"b" not in ledger
    assert all(n in ledger for n in (b"a", b"c", b"d"))


def test_NonceLedger_default_bound() -> None:
    """The default ledger holds exactly NONCE_LEDGER_MAX nonces."""
    ledger = auth.NonceLedger()
    for n in range(auth.NONCE_LEDGER_MAX + 1):
        ledger.add(n.to_bytes(32, "big"))
    assert len(ledger) == auth.NONCE_LEDGER_MAX
    assert (0).to_bytes(32, "big") not in ledger
    assert (1).to_bytes(32, "big") in ledger
    assert auth.NONCE_LEDGER_MAX.to_bytes(32, "big") in ledger


@given(st.lists(st.binary(min_size=1, max_size=2), max_size=40), st.integers(1, 8))
def test_NonceLedger_keeps_the_most_recent(added: list[bytes], size_max: int) -> None:
    """A ledger holds exactly the size_max most recently added distinct nonces."""
    ledger = auth.NonceLedger(size_max=size_max)
    for nonce in added:
        ledger.add(nonce)
    recent: list[bytes] = []
    for nonce in reversed(added):
        if nonce not in recent:
            recent.append(nonce)
    expected = set(recent[:size_max])
    assert len(ledger) == len(expected)
    assert all(n in ledger for n in expected)
    assert not any(n in ledger for n in set(added) - expected)
