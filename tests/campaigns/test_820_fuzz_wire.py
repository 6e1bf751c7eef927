# Wire fuzzing (issue 9): random and mutated frames fed to the native codec's server side and
# to a live controller socket, before and after authentication. Only protocol errors (or, for
# a frame that still decodes, the request's own typed error) may come back; the controller
# serves the next client; its memory stays bounded across many bad connections.
#
# Mutations start from valid frames of every kind (DESIGN.md section 6: every parser treats
# input as hostile) and flip, set, insert, delete or truncate bytes, or rewrite the length or
# kind field, so most inputs get past the first check and reach the body decoders.
from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import HOST, SECRET, controller_spec
from helpers import RawClient
from remcopy.controller.process import ControllerProcess
from remcopy.errors import ProtocolError, RemcopyError, RemcopyInternalError, error_from_wire
from remcopy.states import CopyMode
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp

_NONCE = bytes(range(32))
# Valid frames a client may send, before and after authentication.
CLIENT_FRAMES = [
    native.encode(msg)
    for msg in (
        native.Hello(name=HOST, nonce=_NONCE),
        native.Hello(name="intruder", nonce=_NONCE, role=native.PeerRole.PEER),
        native.Proof(proof=bytes(32)),
        native.IdentifyRequest(request_id=1, devices=(0x0A00, 0x0A03)),
        native.ReadRequest(request_id=2, device=0x0A01, offset=4096, length=4096),
        native.WriteRequest(request_id=3, device=0x0A02, offset=8192, data=b"w" * 100),
        native.WriteRequest(request_id=4, device=0x0A02, offset=0, data=b"f" * 10, fua=True),
        native.FlushRequest(request_id=5, devices=(0x0A00,)),
        native.QueryRequest(request_id=6),
        native.SubscribeRequest(request_id=7),
        native.StatusRequest(request_id=8),
        native.PairOpRequest(
            request_id=9,
            op=PairOp.ESTABLISH,
            items=(
                PairItem(device=0x0A00, peer_serial=65000, peer_device=0x2000, mode=CopyMode.SYNC),
            ),
            options={"k": [1, 2]},
        ),
        native.PairOpRequest(
            request_id=10, op=PairOp.SUSPEND, at_ns=1, items=(PairItem(device=1),)
        ),
        native.UpdateBatch(
            request_id=11,
            updates=(native.Update(device=0x0A00, timestamp_ns=1, offset=0, data=b"u" * 64),),
        ),
    )
]
# Frames only a server sends: a controller must refuse each of them.
SERVER_FRAMES = [
    native.encode(msg)
    for msg in (
        native.Challenge(name="cntla", nonce=_NONCE),
        native.Welcome(serial=64015, name="cntla"),
        native.ErrorReply(code=42, message="no"),
        native.WriteReply(request_id=3),
        native.StatusReply(request_id=8, document={"a": 1}),
    )
]
FRAMES = CLIENT_FRAMES + SERVER_FRAMES
_ANSWER_KINDS = {2, 4, 5} | set(native.REPLY_KINDS)
_PROTOCOL_CODES = {cls.code for cls in (ProtocolError, *ProtocolError.__subclasses__())}


def mutate(frame: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply edits (what, where, value) to a frame; positions wrap around its length."""
    out = bytearray(frame)
    for what, where, value in edits:
        at = where % (len(out) + 1)
        if what == "flip" and out:
            out[at % len(out)] ^= 1 << (value % 8)
        elif what == "set" and out:
            out[at % len(out)] = value % 256
        elif what == "insert":
            out[at:at] = bytes([value % 256]) * (1 + value % 7)
        elif what == "delete":
            del out[at : at + 1 + value % 7]
        elif what == "truncate":
            del out[at:]
        elif what == "length" and len(out) >= 4:
            out[0:4] = struct.pack("!I", value % (native.FRAME_SIZE_MAX_BYTES + 100))
        elif what == "kind" and len(out) >= 5:
            out[4] = value % 256
    return bytes(out)


EDIT_KINDS = ("flip", "set", "insert", "delete", "truncate", "length", "kind")
edits = st.lists(
    st.tuples(st.sampled_from(EDIT_KINDS), st.integers(0, 1 << 16), st.integers(0, 1 << 32)),
    max_size=4,
)
mutated_frames = st.builds(mutate, st.sampled_from(FRAMES), edits)
hostile_bytes = st.one_of(
    st.binary(max_size=256),
    mutated_frames,
    st.lists(mutated_frames, min_size=2, max_size=4).map(b"".join),
    st.lists(st.sampled_from(FRAMES), min_size=1, max_size=4).map(b"".join),
)


def _server(authenticated: bool) -> native.Connection:
    """A server-side codec, fresh or taken through a real handshake to READY."""
    codec = native.Connection(native.Side.SERVER)
    if authenticated:
        codec.receive_data(native.encode(native.Hello(name=HOST, nonce=_NONCE)))
        assert isinstance(codec.next_event(), native.Hello)
        codec.send(native.Challenge(name="cntla", nonce=_NONCE))
        codec.receive_data(native.encode(native.Proof(proof=bytes(32))))
        assert isinstance(codec.next_event(), native.Proof)
        codec.send(native.Welcome(serial=64015, name="cntla"))
        assert codec.phase is native.Phase.READY
    return codec


@settings(max_examples=400, deadline=None)
@given(
    data=hostile_bytes,
    chunks=st.lists(st.integers(1, 512), max_size=8),
    authenticated=st.booleans(),
)
def test_server_codec_raises_only_protocol_errors_on_hostile_bytes(data, chunks, authenticated):
    """Any bytes, in any pieces, give messages, NEED_DATA, CLOSED or a protocol error."""
    codec = _server(authenticated)
    pieces, at = [], 0
    for size in chunks:
        pieces.append(data[at : at + size])
        at += size
    pieces = [p for p in [*pieces, data[at:]] if p] + [b""]  # b"": the peer closed
    try:
        for piece in pieces:
            codec.receive_data(piece)
            while isinstance(event := codec.next_event(), native.Message):
                assert authenticated or isinstance(event, native.Hello | native.Proof)
    except ProtocolError:
        assert codec.next_event() is native.CLOSED  # nothing more is ever decoded
        return
    assert event is native.CLOSED


# The live controller...


@pytest.fixture
async def controller(start_controller, tmp_path: Path) -> ControllerProcess:
    # Plain TCP (a loopback controller with plain_tcp = true): the hostile bytes reach the
    # native codec itself, and a half-close (EOF) after them is possible, which TLS has not.
    # The codec behind TLS is the same; TLS refusals are tested in test_240_tls.py.
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.site = None
    # Thousands of hostile connections come from 127.0.0.1 like the legitimate client after
    # them: the per-address limit on failed handshakes (test_240_tls.py) is lifted here.
    spec.settings["auth_failures_max"] = 1_000_000
    proc: ControllerProcess = await start_controller(spec)
    return proc


def _answer_frames(raw: bytes) -> list[tuple[int, bytes]]:
    """Split what the controller sent into (kind, body); every frame must be whole."""
    frames, at = [], 0
    while at < len(raw):
        assert len(raw) - at >= 16, f"a partial header at the end: {raw[at:]!r}"
        length, kind = struct.unpack_from("!IB", raw, at)
        assert 12 <= length <= native.FRAME_SIZE_MAX_BYTES
        frames.append((kind, raw[at + 16 : at + 4 + length]))
        at += 4 + length
    assert at == len(raw), "a partial frame at the end"
    return frames


async def _hostile_connection(
    address: tuple[str, int], data: bytes, *, authenticated: bool
) -> list[RemcopyError]:
    """Send hostile bytes (after a real handshake, if asked), then EOF; the errors returned."""
    raw = await RawClient.open(address)
    try:
        if authenticated:
            challenge = await raw.hello(HOST)
            assert isinstance(challenge, native.Challenge)
            assert isinstance(await raw.prove(SECRET.encode(), challenge), native.Welcome)
        raw.writer.write(data)
        raw.writer.write_eof()
        async with asyncio.timeout(30):  # a bound, not a clock: the controller closes first
            answer = await raw.reader.read()
    finally:
        await raw.close()
    errors = []
    for kind, body in _answer_frames(answer):
        assert kind in _ANSWER_KINDS, f"the controller sent a frame of kind {kind}"
        if kind == native.ErrorReply.KIND:
            (code,) = struct.unpack_from("!H", body)
            errors.append(error_from_wire(code, body[2:].decode(errors="replace")))
    return errors


def _answered_as_allowed(errors: list[RemcopyError], *, authenticated: bool) -> None:
    for err in errors:
        assert type(err) is not RemcopyError, f"unknown error code: {err}"
        assert not isinstance(err, RemcopyInternalError), f"internal error: {err}"
        if not authenticated:
            assert err.code in _PROTOCOL_CODES, f"before authentication: {type(err)}: {err}"


async def _still_serves(proc: ControllerProcess) -> None:
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        assert len(await channel.identify()) == 4


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=hostile_bytes, authenticated=st.booleans())
async def test_live_controller_answers_hostile_bytes_with_errors_and_serves_the_next_client(
    controller, data, authenticated
):
    """Hostile bytes get protocol (or request) errors only; the next client is served."""
    errors = await _hostile_connection(controller.address, data, authenticated=authenticated)
    _answered_as_allowed(errors, authenticated=authenticated)
    await _still_serves(controller)
    assert controller.running
    log = controller.log_text()
    assert "internal error" not in log and "Traceback" not in log, log[-2000:]


def _rss_bytes(proc: ControllerProcess) -> int:
    assert proc.process is not None
    for line in Path(f"/proc/{proc.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


# The warm-up lets allocator pools and caches reach their working size; after it, a
# thousand more bad connections may not grow the controller by more than this.
RSS_GROWTH_MAX_BYTES = 4 * 1024 * 1024


async def _largest_reads(proc: ControllerProcess) -> None:
    """Read every volume whole, twice: the largest buffers a valid request can make.

    A mutated read may still be valid and ask for up to a whole volume; the allocator keeps
    such a buffer's memory after it is freed, which is a high-water mark and not a leak, so
    the warm-up reaches it first.
    """
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        for _ in range(2):
            for identity in await channel.identify():
                await channel.read(identity.device, 0, identity.capacity_bytes)


async def test_live_controller_memory_stays_bounded_across_bad_connections(
    controller, campaign_seed
):
    """A thousand bad connections after a warm-up grow the controller's RSS by < 4 MiB."""
    rng = random.Random(campaign_seed)

    async def bad_connections(count: int) -> None:
        for _ in range(count):
            frames = rng.choices(FRAMES, k=rng.randint(1, 3))
            data = b"".join(
                mutate(
                    frame,
                    [
                        (rng.choice(EDIT_KINDS), rng.randrange(1 << 16), rng.randrange(1 << 32))
                        for _ in range(rng.randint(0, 3))
                    ],
                )
                for frame in frames
            )
            authenticated = rng.random() < 0.5
            errors = await _hostile_connection(
                controller.address, data, authenticated=authenticated
            )
            _answered_as_allowed(errors, authenticated=authenticated)

    await _largest_reads(controller)
    await bad_connections(300)
    before = _rss_bytes(controller)
    await bad_connections(1000)
    after = _rss_bytes(controller)
    await _still_serves(controller)
    print(f"controller RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    assert after - before < RSS_GROWTH_MAX_BYTES, (before, after)


# A subscriber is forgotten when its connection ends, even if no event was announced since.
SUBSCRIBERS_GROWTH_MAX_BYTES = 2 * 1024 * 1024


async def test_live_controller_forgets_event_subscribers_that_left(controller):
    """Two thousand clients that subscribe to events and leave grow the RSS by < 2 MiB."""
    subscribe = native.encode(native.SubscribeRequest(request_id=1))

    async def subscribers(count: int) -> None:
        for _ in range(count):
            await _hostile_connection(controller.address, subscribe, authenticated=True)

    await subscribers(200)
    before = _rss_bytes(controller)
    await subscribers(2000)
    after = _rss_bytes(controller)
    await _still_serves(controller)
    print(f"controller RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    assert after - before < SUBSCRIBERS_GROWTH_MAX_BYTES, (before, after)


# A header is 16 bytes; the length it claims (up to FRAME_SIZE_MAX_BYTES) must not be
# reserved before those bytes arrive, or a few unauthenticated peers that send only headers
# make the controller hold FRAME_SIZE_MAX_BYTES each.
CLAIMING_PEERS = 4
CLAIMED_GROWTH_MAX_BYTES = 8 * 1024 * 1024


def _unread_bytes(server_port: int, client_ports: set[int]) -> dict[int, int]:
    """Bytes the kernel holds for the controller, not yet read by it, per client port: the
    receive queue of the controller's end of each connection (/proc/net/tcp)."""
    unread: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) != server_port:
            continue
        client = int(remote.split(":")[1], 16)
        if client in client_ports:
            unread[client] = int(queues.split(":")[1], 16)
    return unread


READ_ROUNDS_MAX = 1000


async def _until_read(controller: ControllerProcess, peers: list[RawClient]) -> None:
    """Wait until the controller has taken every byte the peers sent: the receive queue of
    its end of each connection is empty, or it closed that end (a peer that sends a frame
    before authenticating is answered and dropped). Each round serves a real client (a turn
    of the controller's loop), no clock."""
    ports = {peer.writer.get_extra_info("sockname")[1] for peer in peers}
    for _ in range(READ_ROUNDS_MAX):
        await _still_serves(controller)
        unread = _unread_bytes(controller.address[1], ports)
        if not any(unread.values()):
            return
    raise AssertionError(f"the controller left bytes unread: {unread}")


async def test_live_controller_reserves_no_memory_for_the_length_a_header_claims(controller):
    """Peers holding headers that claim the largest frame grow the RSS by < 8 MiB in all."""
    await _still_serves(controller)
    before = _rss_bytes(controller)
    header = struct.pack("!IBBHQ", native.FRAME_SIZE_MAX_BYTES, native.WriteRequest.KIND, 0, 0, 1)
    peers = [await RawClient.open(controller.address) for _ in range(CLAIMING_PEERS)]
    try:
        # The header, then more of the frame in a later read: the controller must find room
        # for what arrives, not for what the header claims is coming.
        for chunk in (header + b"w" * 100, b"w" * 100):
            for peer in peers:
                peer.writer.write(chunk)
                await peer.writer.drain()
            await _until_read(controller, peers)
        during = _rss_bytes(controller)
    finally:
        for peer in peers:
            await peer.close()
    print(f"controller RSS {before / 2**20:.1f} MiB -> {during / 2**20:.1f} MiB")
    assert during - before < CLAIMED_GROWTH_MAX_BYTES, (before, during)
