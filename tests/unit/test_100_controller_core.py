# The controller core without sockets: state commits are all-or-nothing, durable, and
# announced once per changed device.
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from common import controller_spec
from remcopy.controller.config import load_controller_config
from remcopy.controller.core import Controller
from remcopy.errors import DeviceNotFound, IllegalTransition, WriteProtected
from remcopy.events import Event, EventKind
from remcopy.states import PairAction, PairRole, PairState


def _controller(tmp_path: Path) -> Controller:
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=3, size_bytes=1 << 20)
    controller = Controller(load_controller_config(spec.write(tmp_path / "cntla.toml")))
    controller.open()
    return controller


def test_Controller_commit_states_persists_and_announces(tmp_path: Path):
    """A committed change is in the state store, and recorded as one numbered STATE event
    (with its greppable line) that a reopened controller still has."""
    controller = _controller(tmp_path)
    events: list[Event] = []
    controller.add_sink(events.append)

    def as_primary(info):
        info.role = PairRole.PRIMARY

    controller.commit_states(
        {0x0A00: (PairAction.ESTABLISH, as_primary)}, cause="establish", at_ns=123
    )
    (event,) = events
    assert (event.kind, event.seq, event.serial, event.controller) == (
        EventKind.STATE,
        1,
        64015,
        controller.name,
    )
    assert (event.device, event.old, event.new, event.cause, event.at_ns) == (
        "64015:1A00:0A:00",
        PairState.SIMPLEX,
        PairState.PENDING,
        "establish",
        123,
    )
    assert re.fullmatch(
        r"pair 64015:1A00:0A:00 SIMPLEX -> PENDING at=123 cause=establish", event.text
    ), event.text
    controller.close()
    again = _controller(tmp_path)
    assert again.devices[0x0A00].pair.state is PairState.PENDING
    assert again.devices[0x0A00].pair.role is PairRole.PRIMARY
    assert again.devices[0x0A01].pair.state is PairState.SIMPLEX
    assert again.event_log.since(0) == [event]
    again.close()


def test_Controller_commit_states_refuses_a_batch_whole(tmp_path: Path):
    """One illegal move in a batch changes no device, commits nothing, announces nothing."""
    controller = _controller(tmp_path)
    lines: list[str] = []
    controller.add_sink(lines.append)
    with pytest.raises(IllegalTransition, match="cannot resume 64015:1A00:0A:01: pair is SIMPLEX"):
        controller.commit_states(
            {0x0A00: (PairAction.ESTABLISH, None), 0x0A01: (PairAction.RESUME, None)}, cause="test"
        )
    assert all(d.pair.state is PairState.SIMPLEX for d in controller.devices.values())
    assert controller.store.commits == 0
    assert lines == []
    with pytest.raises(DeviceNotFound):
        controller.commit_states({0x0B00: (PairAction.ESTABLISH, None)}, cause="test")
    controller.close()


def test_Controller_refuses_host_writes_to_a_secondary(tmp_path: Path):
    """A device that is the secondary of a pair refuses writes until RECOVERED."""
    controller = _controller(tmp_path)
    host = controller.hosts["hosta"]

    def as_secondary(info):
        info.role = PairRole.SECONDARY

    controller.commit_states({0x0A02: (PairAction.ESTABLISH, as_secondary)}, cause="test")
    with pytest.raises(WriteProtected, match="secondary of a pair in PENDING"):
        controller.write(host, 0x0A02, 0, b"x", timestamp_ns=1)
    assert controller.read(host, 0x0A02, 0, 1) == b"\0"
    controller.commit_states({0x0A02: (PairAction.COPY_DONE, None)}, cause="test")
    controller.commit_states({0x0A02: (PairAction.RECOVER, None)}, cause="test")
    controller.write(host, 0x0A02, 0, b"x", timestamp_ns=1)
    assert controller.read(host, 0x0A02, 0, 1) == b"x"
    controller.close()


def test_Controller_plan_states_changes_nothing_until_applied(tmp_path: Path):
    """A plan (what a suspend computes when it arms) changes no state, commits nothing and
    announces nothing; applied, it commits and announces exactly what commit_states would;
    once a device changed since the plan, the plan no longer holds."""
    controller = _controller(tmp_path)
    events: list[Event] = []
    controller.add_sink(events.append)
    for action in (PairAction.ESTABLISH, PairAction.COPY_DONE):
        controller.commit_states(dict.fromkeys((0x0A00, 0x0A01), (action, None)), cause="setup")
    events.clear()
    commits = controller.store.commits
    plan = controller.plan_states(
        dict.fromkeys((0x0A00, 0x0A01), (PairAction.SUSPEND, None)), cause="suspend", at_ns=77
    )
    assert [d.pair.state for d in controller.devices.values()][:2] == [PairState.DUPLEX] * 2
    assert (controller.store.commits, events) == (commits, [])
    assert plan.holds(controller.devices)
    controller.apply_plan(plan)
    assert controller.store.commits == commits + 1
    assert [(e.device, e.old, e.new, e.cause, e.at_ns) for e in events] == [
        (f"64015:1A00:0A:0{k}", PairState.DUPLEX, PairState.SUSPENDED, "suspend", 77)
        for k in (0, 1)
    ]
    assert events[0].text == "pair 64015:1A00:0A:00 DUPLEX -> SUSPENDED at=77 cause=suspend"
    again = controller.plan_states({0x0A00: (PairAction.RESUME, None)}, cause="resume")
    controller.commit_states({0x0A00: (PairAction.RESUME, None)}, cause="other")
    assert not again.holds(controller.devices)
    controller.close()
    reopened = _controller(tmp_path)
    assert reopened.devices[0x0A01].pair.state is PairState.SUSPENDED
    assert reopened.devices[0x0A01].pair.suspend_at_ns == 0
    assert reopened.devices[0x0A01].pair.changed_at_ns == 77
    reopened.close()


async def test_Controller_announces_durable_commits_at_the_end_of_the_loop_step(tmp_path: Path):
    """With the writer thread running, a commit's events are announced after whoever awaited
    the commit went on (a seal tells its secondaries first); an event recorded meanwhile
    announces them first, so the numbering stays in commit order."""
    controller = _controller(tmp_path)
    async with asyncio.TaskGroup() as tasks:
        writer = tasks.create_task(controller.writer.run())
        await asyncio.sleep(0)  # one loop step: the writer task's first
        assert controller.writer.running
        pending = controller.commit_states({0x0A00: (PairAction.ESTABLISH, None)}, cause="one")
        assert pending is not None
        await pending
        assert controller.event_log.last_seq == 0  # durable, not announced yet
        controller.emit(EventKind.ERROR, "meanwhile")
        kinds = [(e.seq, e.kind) for e in controller.event_log.since(0)]
        assert kinds == [(1, EventKind.STATE), (2, EventKind.ERROR)]
        writer.cancel()
    controller.close()
