# SIGHUP: a controller reads its config again, applies what can change live (hosts and their
# secrets and grants, peers), names in its log what needs a restart, and refuses a config that
# does not load, keeping the one it runs. Every log record is one line, in text or JSON, even a
# message of several lines or a name with a newline from the network. A real controller
# process; the test waits on its sd_notify RELOADING and READY messages, not on time.
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from common import HOST, SECRET, controller_spec
from helpers import NotifySocket, RawClient
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec, free_port
from remcopy.errors import AuthenticationFailed, BrokenResourceError
from remcopy.host.channel import Channel
from remcopy.wire import native

NEW_SECRET = "n3w-s3cret-hosta"
HOSTB_SECRET = "s3cret-hostb-key"
# A text record starts with its time; a continuation line of a multi-line record would not.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} remcopy")


class Reloadable:
    """A controller process started with a notify socket, and its config to edit."""

    def __init__(self, tmp_path: Path) -> None:
        self.notify = NotifySocket(tmp_path)
        # Plain TCP on loopback: the test speaks raw frames and forged names to it.
        self.spec: ControllerSpec = controller_spec(tmp_path, "cntla", 64015, plain_tcp=True)
        self.path = self.spec.write(tmp_path / "cntla.toml")
        self.proc = ControllerProcess(self.path, extra_env={"NOTIFY_SOCKET": self.notify.value})

    async def start(self) -> None:
        await self.proc.start()
        await self.notify.until("READY")

    async def reload(self, text: str | None = None) -> None:
        """Write the spec (or `text`) as the config, SIGHUP, wait until the reload is over."""
        if text is None:
            self.spec.write(self.path)
        else:
            self.path.write_text(text)
        assert self.proc.process is not None
        self.proc.process.send_signal(signal.SIGHUP)
        await self.notify.until("RELOADING")
        await self.notify.until("READY")

    def reload_lines(self) -> list[str]:
        return [line for line in self.proc.log_text().splitlines() if " reload: " in line]

    async def close(self) -> None:
        await self.proc.kill()
        self.notify.close()


async def _refused(address: tuple[str, int], name: str) -> None:
    """A HELLO with `name` is refused: an unknown name gets a challenge like any other (a
    client learns nothing from it), and its proof is refused."""
    client = await RawClient.open(address)
    challenge = await client.hello(name)
    assert isinstance(challenge, native.Challenge)
    assert isinstance(await client.prove(b"not-the-secret-of-anyone", challenge), native.ErrorReply)
    await client.close()


@pytest.fixture
async def controller(tmp_path):
    c = Reloadable(tmp_path)
    await c.start()
    yield c
    await c.close()


async def test_reload_applies_hosts_live_and_names_what_needs_a_restart(controller):
    """hosta's secret rotated, hostb added, a new listen address and a fifth volume: hosta's
    connection is closed and its old secret refused, the new one and hostb work at once; the
    listen address and the volumes are named as needing a restart and left as they run."""
    address = controller.proc.address
    connected = Channel(address, name=HOST, secret=SECRET)
    await connected.status()
    controller.spec.hosts = {HOST: NEW_SECRET, "hostb": HOSTB_SECRET}
    controller.spec.listen = f"127.0.0.1:{free_port()}"
    controller.spec.volumes.append(VolumeSpec(lss=0x0A, cca=9, volser="CN0009", size_bytes=2**22))
    await controller.reload()

    # Its connection was closed (it would still answer otherwise) and connecting again with
    # the old secret is refused.
    with pytest.raises((AuthenticationFailed, BrokenResourceError)):
        await connected.status()
    await connected.close()
    with pytest.raises(AuthenticationFailed):
        async with Channel(address, name=HOST, secret=SECRET) as again:
            await again.status()
    for name, secret in ((HOST, NEW_SECRET), ("hostb", HOSTB_SECRET)):
        async with Channel(address, name=name, secret=secret) as channel:
            status = await channel.status()
            assert status["volumes"] == 4  # the fifth waits for a restart
    said = controller.reload_lines()
    assert any("reload: host hosta: secret changed: its connections are closed" in line
               for line in said)  # fmt: skip
    assert any("reload: host hostb: added" in line for line in said)
    assert any(
        f"reload: controller.listen: 127.0.0.1:0 -> {controller.spec.listen}: "
        "needs a restart" in line
        for line in said
    )
    assert any("reload: volumes: changed (4 -> 5 entries): needs a restart" in line
               for line in said)  # fmt: skip
    assert any("2 changes applied, 2 need a restart" in line for line in said)
    assert NEW_SECRET not in controller.proc.log_text()  # secrets are never logged


async def test_reload_refuses_a_bad_config_whole_and_logs_it_on_one_line(controller):
    """A config with two problems: refused, both named in one log line, nothing changed (the
    old secret still works); a name with a newline from the network is one line too."""
    address = controller.proc.address
    text = controller.path.read_text()
    named = re.search(r'secret_file = "[^"]*cntla-host-hosta.secret"', text)
    assert named is not None
    bad = text.replace(named[0], 'secret = "short"') + "\n[[hosts]]\nname = 7\n"
    await controller.reload(bad)
    async with Channel(address, name=HOST, secret=SECRET) as channel:
        assert (await channel.status())["name"] == "cntla"
    (refused,) = [line for line in controller.reload_lines() if "refused" in line]
    assert "the running config is kept" in refused
    assert "hosts[0].secret: a config keeps no secret itself" in refused
    assert "hosts[1].name" in refused
    assert "\\n" in refused  # the problems, one per line in the message, escaped in the log

    forged = "intruder\n2030-01-01 00:00:00,000 remcopy.controller INFO authenticated admin"
    await _refused(address, forged)
    lines = controller.proc.log_text().splitlines()
    assert not [line for line in lines if line.startswith("2030-")]
    assert all(_RECORD.match(line) for line in lines), [
        line for line in lines if not _RECORD.match(line)
    ]


async def test_reload_to_json_logs_writes_json_lines(controller):
    """log_format = "json" applies live: every record after the reload is one JSON object on
    one line, a name with a newline from the network inside its message."""
    controller.spec.settings["log_format"] = "json"
    await controller.reload()
    forged = 'intruder\n{"level": "info", "message": "forged"}'
    await _refused(controller.proc.address, forged)
    async with Channel(controller.proc.address, name=HOST, secret=SECRET) as channel:
        await channel.status()  # the refusal was logged before this answer
    lines = controller.proc.log_text().splitlines()
    after = lines[next(i for i, line in enumerate(lines) if "controller.log_format" in line) + 1 :]
    records = [json.loads(line) for line in after]
    assert {r["level"] for r in records} <= {"info", "warning", "error"}
    refused = [r for r in records if "intruder" in r["message"]]
    assert refused and all(r["logger"] == "remcopy.controller" for r in refused)
    assert "forged" not in [r["message"] for r in records]
