# The secondary journal of an async consistency group is durable before the primary is told
# an update arrived: the secondary controller, watched by strace, acknowledges no update whose
# journal record was not fdatasync'd first. The primary forgets what the secondary
# acknowledged, so an acknowledgement sent before the fdatasync would leave, after a power
# loss of the secondary, an update that exists nowhere (and C could go back).
#
# What is counted, in the order strace saw it (every thread of the secondary):
# - appends: writev calls on the journal file that completed (one per update);
# - durable: the appends that had completed when an fdatasync of the journal file began that
#   has completed since;
# - acknowledged: the updates counted by the UpdateAck frames (kind 27) written to a socket,
#   at the call's start (plain TCP: the bytes are readable).
# The rule: acknowledged <= durable at every acknowledgement. An acknowledgement sent at
# arrival fails it at the first update.
from __future__ import annotations

import asyncio
import re
from pathlib import Path

from mirror_world import SECONDARY_SERIAL, all_ok, build, channel, primary_serial, stop

from remcopy.host.channel import Channel
from remcopy.states import CopyMode, PairState
from remcopy.wire import native
from remcopy.wire.native import PairOp
from syscalls import syscalls

GROUP = "DURABLE"
ROUNDS = 6
WRITES_PER_ROUND = 16
# An UpdateAck frame: length 16, kind 27, flags and reserved 0, request id, updates applied.
_ACK = re.compile(
    re.escape(b"\x00\x00\x00\x10" + bytes([native.UpdateAck.KIND]) + b"\x00\x00\x00")
    + rb"(.{8})(.{4})",
    re.S,
)
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_HEX = re.compile(r"\\x([0-9a-f]{2})")
_FD = re.compile(r"^\w+\(\d+<((?:\\x[0-9a-f]{2})*)>")


def _bytes_of(call: str) -> bytes:
    """The data a traced write/writev/sendmsg call carried (strace -xx prints it as hex)."""
    return bytes(int(h, 16) for h in _HEX.findall(call))


def _fd_path(call: str) -> str:
    """The path (or socket:[inode]) strace -y named the call's file descriptor with."""
    m = _FD.match(call)
    return "" if m is None else _bytes_of(m.group(1)).decode(errors="replace")


def _check_order(lines: list[str], journal: str) -> tuple[int, int, int]:
    """Walk the trace; assert no acknowledgement ran ahead of the journal's fdatasync
    (`journal`: the path prefix of the journal's segment files; the test's writes fit in one).
    Returns (appends, durable, acknowledged) at the end."""
    appends = durable = acknowledged = 0
    open_calls: dict[str, tuple[str, int]] = {}  # pid -> (call, appends when it began)
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        pid, call = m.groups()
        if call.startswith("<..."):  # the end of a call that was interrupted in the trace
            name, began = open_calls.pop(pid, ("", 0))
            if name == "writev":
                appends += 1
            elif name == "fdatasync":
                durable = max(durable, began)
            continue
        unfinished = call.endswith("<unfinished ...>")
        path = _fd_path(call)
        on_journal = path.startswith(journal) and path.endswith(".jnl")  # any of its segments
        if call.startswith("writev(") and on_journal:
            if unfinished:
                open_calls[pid] = ("writev", appends)
            else:
                appends += 1
        elif call.startswith("fdatasync(") and on_journal:
            if unfinished:
                open_calls[pid] = ("fdatasync", appends)
            else:
                durable = max(durable, appends)
        elif not on_journal and call.startswith(("write(", "writev(", "sendmsg(", "sendto(")):
            for ack in _ACK.finditer(_bytes_of(call)):
                acknowledged += int.from_bytes(ack.group(2), "big")
                assert acknowledged <= durable, (
                    f"{acknowledged} updates acknowledged, only {durable} fdatasync'd: {line[:200]}"
                )
    return appends, durable, acknowledged


async def _confirmed(ch: Channel, devices: tuple[int, ...]) -> None:
    """Wait until the primary holds no unconfirmed update (each round is a real query)."""
    for _ in range(5000):
        statuses = await ch.query(devices)
        if all(s.lag_bytes == 0 and s.state is PairState.DUPLEX for s in statuses):
            return
    raise AssertionError(f"updates not confirmed: {statuses}")


async def test_an_update_is_acknowledged_only_after_its_journal_record_is_fdatasynced(
    tmp_path: Path,
):
    world = await build(tmp_path, volumes=2, tls=False)
    try:
        primary, secondary = world.primaries[0], world.secondary
        assert secondary is not None
        devices = (0x0A00, 0x0A01)
        async with channel(primary) as ch:
            events = await ch.subscribe()
            all_ok(
                await ch.pair_op(
                    PairOp.ESTABLISH,
                    world.pair_items(0, CopyMode.ASYNC, consistency_group=True),
                    options={
                        "group": GROUP,
                        "members": [primary_serial(0)],
                        "secondaries": [SECONDARY_SERIAL],
                    },
                )
            )
            for _ in devices:
                await events.wait_until(lambda e: e.new is PairState.DUPLEX)
            await _confirmed(ch, devices)
            # The group's journal segments: sjournal/GROUP.NNNNNNNN.jnl.
            journal = str(tmp_path / "cntlb" / "sjournal" / f"{GROUP.encode().hex()}.")
            trace = tmp_path / "secondary.trace"
            options = ("-xx", "-s", "65536")
            calls = "fdatasync,write,writev,sendmsg,sendto"
            async with syscalls(secondary, trace, calls=calls, options=options) as lines:
                for r in range(ROUNDS):
                    # 16 writes at once: batches arrive while an fdatasync runs (group commit).
                    await asyncio.gather(
                        *(
                            ch.write(devices[i % 2], (r * WRITES_PER_ROUND + i) * 4096, b"d" * 4096)
                            for i in range(WRITES_PER_ROUND)
                        )
                    )
                await _confirmed(ch, devices)  # every acknowledgement was sent while traced
    finally:
        await stop(world)
    appends, durable, acknowledged = _check_order(lines, journal)
    written = ROUNDS * WRITES_PER_ROUND
    # The trace saw every update: each appended once, fdatasync'd, acknowledged once.
    assert appends == written, (appends, written)
    assert acknowledged == written, (acknowledged, written)
    assert durable == written, (durable, written)
