# The pair store: commits cost what changed, survive kill -9 at any point as the last committed
# state, and a legacy pairs.json is imported once.
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from remcopy.controller import statefile
from remcopy.controller.committer import StateWriter, _merged
from remcopy.controller.pairstore import COLUMNS, LEGACY_FILE_NAME, PairStore
from remcopy.errors import ConfigError, VolumeIOError


def _doc(state: str, **fields: object) -> dict[str, object]:
    """A whole pair document, as the store gives it back."""
    return {**dict(COLUMNS), "state": state, **fields}


_WRITER = """
import sys
from pathlib import Path
from remcopy.controller.pairstore import PairStore

store = PairStore(Path(sys.argv[1]), serial=64015)
store.load()
devices = int(sys.argv[2])
for n in range(1, 1001):
    # Commit n: every device's document says n (the whole table changes at once, as in a
    # suspend), then the line: after it is printed, commit n is durable.
    store.commit({key: {"state": "DUPLEX", "suspend_at_ns": n} for key in range(devices)})
    print(n, flush=True)
"""


# The same through the writer thread: commits submitted in bursts from an event loop, a burst
# queued while the previous transaction runs (so commits share transactions), each printed
# once its future says durable. Commit n writes n into device 0 and into every device d with
# d % 4 == n % 4, so a lost, torn or reordered commit shows in the rows.
_ASYNC_WRITER = """
import asyncio
import random
import sys
from pathlib import Path
from remcopy.controller.committer import StateWriter
from remcopy.controller.pairstore import PairStore


async def main() -> None:
    store = PairStore(Path(sys.argv[1]), serial=64015)
    store.load()
    writer = StateWriter(store)
    rng = random.Random(int(sys.argv[2]))
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(writer.run())
        await asyncio.sleep(0)  # the writer runs: commits go to its thread
        n = 0
        while n < 1000:
            burst = []
            for _ in range(rng.randint(1, 20)):
                n += 1
                if n > 1000:
                    break
                docs = {d: {"state": "DUPLEX", "suspend_at_ns": n} for d in range(64)
                        if d == 0 or d % 4 == n % 4}
                done = writer.submit(docs)
                done.add_done_callback(lambda _, n=n: print(n, flush=True))
                burst.append(done)
            await burst[0]
        await writer.settled()
        running.cancel()


asyncio.run(main())
"""


def _killed_after(stop_after: int, script: str, folder: Path, argument: str) -> int:
    """Run a writer script, SIGKILL it once it reported commit `stop_after` durable (or
    later); returns the last commit it reported. Reports come in commit order."""
    last = 0
    with subprocess.Popen(
        [sys.executable, "-c", script, str(folder), argument], stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None
        for line in writer.stdout:
            assert int(line) == last + 1, "reported durable out of order"
            last = int(line)
            if last >= stop_after:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    return last


def test_PairStore_commits_only_the_devices_it_is_given(tmp_path: Path):
    """A commit changes the rows it names; others keep their last committed document."""
    store = PairStore(tmp_path, serial=64015)
    assert store.load() == ({}, {})
    store.commit({1: _doc("DUPLEX"), 2: _doc("DUPLEX")}, {"PAY": [64016, 64015]})
    store.commit({2: _doc("SUSPENDED", suspend_at_ns=7, consistency_group=True), 3: None})
    store.commit({1: None})
    store.close()
    again = PairStore(tmp_path, serial=64015)
    assert again.load() == (
        {2: _doc("SUSPENDED", suspend_at_ns=7, consistency_group=True)},
        {"PAY": [64015, 64016]},
    )
    assert os.stat(again.path).st_mode & 0o777 == 0o600
    again.close()


def test_PairStore_refuses_another_controllers_state(tmp_path: Path):
    """A data_dir that holds another serial's pair state is refused, naming both serials."""
    store = PairStore(tmp_path, serial=64015)
    store.load()
    store.close()
    other = PairStore(tmp_path, serial=64016)
    with pytest.raises(ConfigError, match="belongs to controller serial 64015, not 64016"):
        other.load()
    other.close()


def test_PairStore_imports_a_legacy_pairs_json_once(tmp_path: Path):
    """A pairs.json found at open replaces the stored state and is renamed, read once."""
    store = PairStore(tmp_path, serial=64015)
    store.load()
    store.commit({9: _doc("DUPLEX")})
    store.close()
    statefile.write_atomic(
        tmp_path / LEGACY_FILE_NAME,
        {"format": 1, "devices": {"0A00": {"state": "PENDING"}}, "groups": {"G": [1]}},
    )
    again = PairStore(tmp_path, serial=64015)
    assert again.load() == ({0x0A00: _doc("PENDING")}, {"G": [1]})
    assert not (tmp_path / LEGACY_FILE_NAME).exists()
    assert json.loads((tmp_path / f"{LEGACY_FILE_NAME}.imported").read_text())["groups"]
    assert again.load() == ({0x0A00: _doc("PENDING")}, {"G": [1]})
    again.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_PairStore_after_kill_9_holds_the_last_committed_state(tmp_path: Path, seed: int):
    """A writer killed at a random point of 1,000 commits leaves exactly one commit's state,
    never a mix, and never older than the last commit it reported durable."""
    rng = random.Random(seed)
    devices = 64
    for round_ in range(4):
        folder = tmp_path / str(round_)
        folder.mkdir()
        last = _killed_after(rng.randrange(1, 400), _WRITER, folder, str(devices))
        store = PairStore(folder, serial=64015)
        documents, _groups = store.load()
        store.close()
        commits = {doc["suspend_at_ns"] for doc in documents.values()}
        assert len(documents) == devices
        assert len(commits) == 1, f"seed={seed}: a mix of commits {sorted(commits)}"
        (found,) = commits
        # It goes on committing until the signal lands: any later commit may be the last.
        assert last <= found <= 1000, f"seed={seed}: reported {last}, found {found}"


def test_PairStore_opens_a_store_made_before_the_last_change_columns(tmp_path: Path):
    """A pairs.db without the columns added since (when and why the state last changed)
    opens with its rows whole, those fields at their defaults; new commits keep them."""
    old = sqlite3.connect(tmp_path / "pairs.db")
    old_columns = [name for name, _ in COLUMNS if name not in ("changed_at_ns", "change_cause")]
    old.execute(
        "CREATE TABLE pairs (device INTEGER PRIMARY KEY, "
        + ", ".join(f"c_{n}" for n in old_columns)
        + ")"
    )
    old.execute(
        "INSERT INTO pairs VALUES (5, 'SUSPENDED', 'primary', 'sync', 65000, 8192, 42, "
        "'never', 0, '')"
    )
    old.commit()
    old.close()
    store = PairStore(tmp_path, serial=64015)
    devices, _ = store.load()
    assert devices == {
        5: _doc(
            "SUSPENDED",
            role="primary",
            mode="sync",
            peer_serial=65000,
            peer_device=8192,
            suspend_at_ns=42,
        )
    }
    assert (devices[5]["changed_at_ns"], devices[5]["change_cause"]) == (0, "")
    store.commit({5: _doc("DUPLEX", changed_at_ns=99, change_cause="resume")})
    store.close()
    again = PairStore(tmp_path, serial=64015)
    assert again.load()[0] == {5: _doc("DUPLEX", changed_at_ns=99, change_cause="resume")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_StateWriter_after_kill_9_holds_the_last_committed_state(tmp_path: Path, seed: int):
    """Killed at a random point of 1,000 commits submitted from an event loop (many sharing
    one transaction), the store holds exactly the state after some commit f, every row as
    commit f left it, and f is not older than the last commit reported durable."""
    rng = random.Random(seed)
    for round_ in range(4):
        folder = tmp_path / str(round_)
        folder.mkdir()
        last = _killed_after(rng.randrange(1, 900), _ASYNC_WRITER, folder, str(seed * 10 + round_))
        store = PairStore(folder, serial=64015)
        documents, _groups = store.load()
        store.close()
        found = documents[0]["suspend_at_ns"]
        assert last <= found <= 1000, f"seed={seed}: reported {last}, found {found}"
        expected = {0: found}
        for device in range(1, 64):
            touched = [n for n in range(1, found + 1) if n % 4 == device % 4]
            if touched:
                expected[device] = touched[-1]
        assert {d: doc["suspend_at_ns"] for d, doc in documents.items()} == expected


async def test_StateWriter_commits_queued_during_one_share_the_next(tmp_path: Path):
    """Commits submitted while one transaction is held open on the writer thread are written
    together in the next transaction, in order (the later document of a device wins)."""
    pause = tmp_path / "pause"
    pause.mkdir()
    os.mkfifo(pause / "paused")
    os.mkfifo(pause / "release")
    store = PairStore(tmp_path, serial=64015)
    store.load()
    writer = StateWriter(store, pause_dir=pause)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(writer.run())
        await asyncio.sleep(0)  # the writer task runs: submissions now queue
        first = writer.submit({1: _doc("PENDING")})
        assert first is not None

        def read_paused() -> str:
            with (pause / "paused").open() as fifo:
                return fifo.readline().strip()

        assert await asyncio.to_thread(read_paused) == "devices=1 states=PENDING:1"
        later = [writer.submit({1: _doc("DUPLEX", suspend_at_ns=n), 2: None}) for n in range(50)]
        assert not first.done()
        (pause / "paused").unlink()

        def release() -> None:
            with (pause / "release").open("w") as fifo:
                fifo.write("go\n")

        await asyncio.to_thread(release)
        await asyncio.gather(*[f for f in later if f is not None])
        assert first.done()
        running.cancel()
    assert (writer.figures.commits, writer.figures.transactions) == (51, 2)
    assert writer.figures.largest_batch == 50
    store.close()
    again = PairStore(tmp_path, serial=64015)
    assert again.load() == ({1: _doc("DUPLEX", suspend_at_ns=49)}, {})
    again.close()


async def test_StateWriter_commits_what_is_queued_when_cancelled(tmp_path: Path):
    """A stopping controller cancels the writer: what was submitted is still committed."""
    store = PairStore(tmp_path, serial=64015)
    store.load()
    writer = StateWriter(store)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(writer.run())
        await asyncio.sleep(0)  # the writer task runs: submissions now queue
        queued = [writer.submit({n: _doc("DUPLEX")}) for n in range(5)]
        running.cancel()
    assert all(f is not None and f.done() and f.exception() is None for f in queued)
    assert writer.submit({9: _doc("PENDING")}) is None  # stopped: committed at once
    store.close()
    again = PairStore(tmp_path, serial=64015)
    assert set(again.load()[0]) == {0, 1, 2, 3, 4, 9}
    again.close()


def test_an_arm_writes_T_alone_and_refuses_a_device_without_a_pair(tmp_path: Path):
    """An arm changes the armed T of existing rows and nothing else; an arm naming a device
    with no row (no pair) fails the whole commit: nothing of it is written."""
    store = PairStore(tmp_path, serial=64015)
    store.load()
    store.commit({1: _doc("DUPLEX", peer_device=7), 2: _doc("PENDING", peer_device=8)})
    store.commit({}, armed={1: 77, 2: 77})
    store.commit({}, armed={2: 0})  # disarmed
    with pytest.raises(VolumeIOError, match=r"cannot arm 2 devices at 5: 1 of them have a pair"):
        store.commit({3: _doc("DUPLEX")}, armed={1: 5, 9: 5})
    store.close()
    again = PairStore(tmp_path, serial=64015)
    assert again.load() == (
        {
            1: _doc("DUPLEX", peer_device=7, suspend_at_ns=77),
            2: _doc("PENDING", peer_device=8, suspend_at_ns=0),
        },
        {},
    )
    again.close()


def test_commits_merged_into_one_transaction_keep_their_order_with_arms():
    """A later document replaces an earlier arm of its device; a later arm changes the T of an
    earlier document; an arm of a device with no document in the batch stays an arm."""
    a, b = _doc("DUPLEX", peer_device=1), _doc("SUSPENDED", peer_device=2)
    devices, groups, armed = _merged(
        [
            ({1: a}, {}, {}),
            ({}, {"G": [1, 2]}, {1: 5, 2: 5, 3: 5}),
            ({2: b}, {}, {}),
            ({}, {}, {4: 6}),
        ]
    )
    assert devices == {1: {**a, "suspend_at_ns": 5}, 2: b}
    assert groups == {"G": [1, 2]}
    assert armed == {3: 5, 4: 6}
