# Running as a service: the controller speaks systemd's sd_notify protocol to the socket in
# NOTIFY_SOCKET (READY once it serves, WATCHDOG every half of WATCHDOG_USEC, STOPPING on
# SIGTERM). The test binds the datagram socket itself, as the service manager would, and
# starts a real controller process pointed at it.
from __future__ import annotations

import pytest

from common import controller_spec
from helpers import NotifySocket
from remcopy.controller.notify import notify_address, watchdog_interval_s
from remcopy.controller.process import ControllerProcess

WATCHDOG_USEC = 100_000  # a WATCHDOG=1 every 50 ms


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_controller_notifies_ready_watchdog_and_stopping(tmp_path, abstract):
    """READY=1 (with a STATUS naming the address) once it serves, then WATCHDOG=1 again and
    again, then STOPPING=1 on SIGTERM, to a path or an abstract ('@') socket."""
    manager = NotifySocket(tmp_path, abstract=abstract)
    spec = controller_spec(tmp_path, "cntla", 64015)
    proc = ControllerProcess(
        spec.write(tmp_path / "cntla.toml"),
        extra_env={"NOTIFY_SOCKET": manager.value, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    try:
        await proc.start()
        ready = await manager.until("READY")
        assert ready["READY"] == "1"
        assert f"on {proc.endpoint}" in ready["STATUS"]
        for _ in range(3):  # the watchdog goes on while the controller serves
            assert (await manager.receive()) == {"WATCHDOG": "1"}
        assert await proc.stop() == 0
        stopping = await manager.until("STOPPING")
        assert stopping["STOPPING"] == "1"
    finally:
        if proc.running:
            await proc.kill()
        manager.close()
    assert [m for m in manager.messages if "READY" in m] == [ready]


def test_notify_address_reads_a_path_or_an_abstract_name() -> None:
    """'@name' is an abstract socket (a leading NUL); a path stays; anything else is none."""
    assert notify_address({"NOTIFY_SOCKET": "@/org/x"}) == "\0/org/x"
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert notify_address({}) is None


def test_watchdog_interval_is_half_the_usec_for_this_process_only() -> None:
    """Half of WATCHDOG_USEC, in seconds; none when WATCHDOG_PID names another process or
    the value is not a positive number."""
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 7) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 7) is None
    assert watchdog_interval_s({}, 7) is None
