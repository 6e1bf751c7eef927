# `remcopy group suspend --json` writes exactly one JSON document on stdout, whole, whatever
# stdout is: here a Unix socket (what bench/groups.py's uvloop gives a child) that is
# non-blocking, with the smallest send buffer, with debug logging, every warning, Python's
# dev mode and asyncio's debug mode on (whatever they write goes to stderr). The document is
# several times the send buffer, so it cannot leave in one write: with Python's own stdout
# the command stops at the first full buffer and exits 0 with the document cut there
# (bench/groups.py's parse error at line 8127 column 2 on 10,000 pairs).
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mirror_world import build, stop

from common import HOST, SECRET, host_tls_toml, run_remcopy, secret_file_line

VOLUMES = 600
LSS_COUNT = (VOLUMES + 255) // 256


def _ranges(side_base: int) -> list[str]:
    """Device numbers of one side, one range per LSS: XX00-XXFF from `side_base` up."""
    out = []
    for j in range(LSS_COUNT):
        last = min(VOLUMES, (j + 1) * 256) - 1 - j * 256
        out.append(f"{side_base + j * 0x100:04X}-{side_base + j * 0x100 + last:04X}")
    return out


def _host_file(root: Path, primary: str, secondary: str) -> Path:
    paths = []
    for j, (ours, theirs) in enumerate(zip(_ranges(0x1A00), _ranges(0x2B00), strict=True)):
        paths.append(
            f'[[paths]]\ndevices = "{ours}"\ncontroller = "cntla0"\n'
            f'ssid = "{0x1A00 + j * 0x100:04X}"\nlss = "{0x0A + j:02X}"\ncca = "00"\n'
        )
        paths.append(
            f'[[paths]]\ndevices = "{theirs}"\ncontroller = "cntlb"\n'
            f'ssid = "{0x2B00 + j * 0x100:04X}"\nlss = "{0x20 + j:02X}"\ncca = "00"\n'
            "online = false\n"
        )
    path = root / "hosta.toml"
    path.write_text(
        host_tls_toml() + f'[host]\nname = "{HOST}"\n{secret_file_line(HOST, SECRET)}\n\n'
        f'[[controllers]]\nname = "cntla0"\naddress = "{primary}"\n'
        f'[[controllers]]\nname = "cntlb"\naddress = "{secondary}"\n\n' + "\n".join(paths)
    )
    return path


def _group_file(root: Path) -> Path:
    pairs = [
        f'[[pairs]]\nhost = "{HOST}"\ndevices = "{ours}"\nsecondary_devices = "{theirs}"\n'
        for ours, theirs in zip(_ranges(0x1A00), _ranges(0x2B00), strict=True)
    ]
    path = root / "big.toml"
    path.write_text('[group]\nname = "BIG"\nmode = "sync"\n\n' + "\n".join(pairs))
    return path


def _suspend_on_a_socket(catalog: Path) -> tuple[int, bytes, str, int]:
    """`remcopy group suspend BIG --json` with stdout a non-blocking Unix socket with the
    smallest send buffer; returns the exit code, stdout, stderr and the buffer's size."""
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum
    sndbuf = theirs.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    theirs.setblocking(False)  # O_NONBLOCK on the description the child's stdout is
    with ours, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [
                *(sys.executable, "-X", "dev", "-m", "remcopy", "-vv", "group", "suspend"),
                *("BIG", "--host", HOST, "--json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=theirs.fileno(),
            stderr=err,
            env=dict(
                os.environ,
                REMCOPY_CATALOG=str(catalog),
                COLUMNS="20",
                PYTHONWARNINGS="always",
                PYTHONASYNCIODEBUG="1",
            ),
        )
        theirs.close()
        chunks = []
        while chunk := ours.recv(65536):
            chunks.append(chunk)
        code = child.wait(timeout=120)
        err.seek(0)
        return code, b"".join(chunks), err.read(), sndbuf


async def test_group_suspend_json_is_one_whole_document_on_a_nonblocking_socket(tmp_path):
    world = await build(tmp_path, volumes=VOLUMES, size_bytes=65536)
    catalog = tmp_path / "catalog.db"
    try:
        assert world.secondary is not None
        host = _host_file(tmp_path, world.primaries[0].endpoint, world.secondary.endpoint)
        run_remcopy("host", "add", str(host), catalog=catalog)
        run_remcopy("scan", HOST, catalog=catalog)
        run_remcopy("group", "define", str(_group_file(tmp_path)), catalog=catalog)
        run_remcopy("group", "establish", "BIG", "--host", HOST, "--wait", catalog=catalog)
        code, out, stderr, sndbuf = await asyncio.to_thread(_suspend_on_a_socket, catalog)
        assert "Traceback" not in stderr and "BlockingIOError" not in stderr, stderr[-2000:]
        assert code == 0, stderr[-2000:]
        assert len(out) > 2 * sndbuf, (len(out), sndbuf)  # more than one write's worth
        document = json.loads(out)  # one document and nothing else: extra data would fail
        assert document["consistent"] is True
        assert document["counts"] == {"SUSPENDED": VOLUMES}
        assert len(document["pair_states"]) == VOLUMES
    finally:
        await stop(world)
