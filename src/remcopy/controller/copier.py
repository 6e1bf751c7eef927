# The copier: initial copy, resync and failback copies of marked tracks to the secondary.
#
# Why: a pair is DUPLEX only once every track that may differ has been copied. A copy sends
# each marked track as an update on the same link as the host writes' updates, so that a
# track read before a host write to it is also sent before that write's update.
#
# Theory of operation
# - Each track is read and pushed in one loop step (no host write between them); its bit is
#   cleared when confirmed, unless a host write marked it again meanwhile (generation).
# - A zero track travels as its length only.
# - When nothing is left, the secondary confirms first (PEER_STATE copy_done), then the
#   primary commits COPY_DONE -> DUPLEX. Copies that finish meanwhile share one request and
#   one commit per secondary controller.
#
# Rules this module keeps:
# - Bounded: COPY_IN_FLIGHT_PER_DEVICE tracks per device, COPY_IN_FLIGHT_MAX per controller.
# - A copy that fails fails its device (hold or SUSPENDED_ERROR), never the others.
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from remcopy.controller.core import PairInfo
from remcopy.errors import BrokenResourceError, RemcopyError
from remcopy.states import PairAction, PairState
from remcopy.wire import native

if TYPE_CHECKING:
    from remcopy.controller.runs import DeviceRun, Replica

# Track copies in flight per device and per controller.
COPY_IN_FLIGHT_PER_DEVICE: Final = 8
COPY_IN_FLIGHT_MAX: Final = 64

_CopyEnd = Literal["duplex", "again"] | RemcopyError
"""How a finished copy ended: DUPLEX, marked again meanwhile (copy more), or refused."""


class Copier:
    """The copies of one controller's replicator."""

    def __init__(self, rep: Replica) -> None:
        self.rep = rep
        # What the moved code below names on self, taken from the replicator that owns it.
        self.controller = rep.controller
        self.counters = rep.counters
        self.link = rep.link
        self.spawn = rep.spawn
        self._device_failed = rep.device_failed
        self._zeros: dict[int, bytes] = {}
        self._copy_slots = asyncio.Semaphore(COPY_IN_FLIGHT_MAX)
        # Copies that finished and wait to be confirmed, per secondary controller: one
        # PEER_STATE request and one state commit for all that finished meanwhile.
        self._copies_done: dict[int, list[tuple[DeviceRun, asyncio.Future[_CopyEnd]]]] = {}
        self._copies_done_sending: set[int] = set()

    def start_copier(self, run: DeviceRun) -> None:
        if run.copier is not None and not run.copier.done():
            return
        run.copier = self.spawn(self._copy(run), name=f"copy {run.device.address}")

    async def _copy(self, run: DeviceRun) -> None:
        """Copy every marked track to the secondary, then COPY_DONE -> DUPLEX."""
        device, pair = run.device, run.device.pair
        link = self.link(pair.peer_serial)
        volume = device.volume
        window = asyncio.Semaphore(COPY_IN_FLIGHT_PER_DEVICE)
        in_flight: set[asyncio.Task[None]] = set()
        failed: list[RemcopyError] = []
        try:
            await link.ensure_connected()
        except RemcopyError as exc:
            self._device_failed(run, exc)
            return

        async def one(track: int, confirmed: asyncio.Future[None], generation: int) -> None:
            try:
                await confirmed
                if run.changemap.clear_if(track, generation):
                    run.tracks_copied += 1
                    self.counters["tracks_copied"] += 1
            except RemcopyError as exc:
                failed.append(exc)
            finally:
                window.release()
                self._copy_slots.release()

        while True:
            while not failed and device.pair.state is PairState.PENDING:
                tracks = run.changemap.copy_tracks()
                if not tracks:
                    break
                for track in tracks:
                    await window.acquire()
                    await self._copy_slots.acquire()
                    if failed or device.pair.state is not PairState.PENDING:
                        window.release()
                        self._copy_slots.release()
                        break
                    # Read and push in one loop step: no host write can come between them.
                    generation = run.changemap.generation()
                    data = volume.read_track(track)
                    offset = track * volume.track_size_bytes
                    if data == self._zero_track(len(data)):
                        # A zero track travels as its length only (fresh volumes are mostly zeros).
                        update = native.zero_update(
                            device=pair.peer_device,
                            timestamp_ns=time.time_ns(),
                            offset=offset,
                            length=len(data),
                        )
                        self.counters["zero_tracks_copied"] += 1
                    else:
                        update = native.Update(
                            device=pair.peer_device,
                            timestamp_ns=time.time_ns(),
                            offset=offset,
                            data=data,
                            flags=native.UPDATE_COPY,
                        )
                        self.counters["bytes_copied"] += len(data)
                        run.bytes_sent += len(data)
                    confirmed = link.push(update)
                    # Awaited below (gather), a RemcopyError collected in `failed`, any other
                    # error raised from here. Not a task group: cancelled with the copy (a seal
                    # stops it), a track's task not yet started would never run its `finally`
                    # and the shared copy slots would leak; left alone, each ends once its
                    # update is confirmed or failed by the link's own deadline.
                    task = asyncio.get_running_loop().create_task(one(track, confirmed, generation))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.gather(*in_flight)
            if failed:
                self._device_failed(run, failed[0])
                return
            if device.pair.state is PairState.PENDING and run.changemap.copy_count() == 0:
                end = await self._copy_done(run)
                if isinstance(end, RemcopyError):
                    self._device_failed(run, end)
                    return
                if end == "again":
                    continue  # tracks were marked meanwhile: copy them too
            return

    async def _copy_done(self, run: DeviceRun) -> _CopyEnd:
        """Confirm a finished copy with the secondary, then commit COPY_DONE -> DUPLEX.

        The secondary first: once the primary says DUPLEX, the secondary does too, so a site
        lost right after finds a secondary that can be recovered. Copies that finish while a
        confirmation is on its way wait for the next one: a group of thousands of pairs costs
        a few requests and state commits, not one each (every commit rewrites the whole state
        file, and the secondary answers requests in order within ack_timeout_s)."""
        serial = run.device.pair.peer_serial
        done: asyncio.Future[_CopyEnd] = asyncio.get_running_loop().create_future()
        self._copies_done.setdefault(serial, []).append((run, done))
        if serial not in self._copies_done_sending:
            self._copies_done_sending.add(serial)
            self.spawn(self._confirm_copies(serial), name=f"copies done to {serial}")
        return await done

    async def _confirm_copies(self, serial: int) -> None:
        batch: list[tuple[DeviceRun, asyncio.Future[_CopyEnd]]] = []
        try:
            while batch := self._copies_done.pop(serial, []):
                answers = await self.rep.tell_peer(serial, [r for r, _ in batch], "copy_done")
                by_device = {a.device: a for a in answers}
                ends: list[tuple[asyncio.Future[_CopyEnd], _CopyEnd]] = []
                finished: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
                for run, done in batch:
                    answer = by_device.get(run.device.pair.peer_device)
                    if answer is None or answer.code:
                        reason = answer.message if answer is not None else "no answer"
                        ends.append(
                            (
                                done,
                                BrokenResourceError(
                                    f"secondary did not confirm the end of the copy: {reason}"
                                ),
                            )
                        )
                    elif (
                        run.device.pair.state is PairState.PENDING
                        and run.changemap.copy_count() == 0
                    ):
                        finished[run.device.key] = (PairAction.COPY_DONE, None)
                        ends.append((done, "duplex"))
                    else:
                        ends.append((done, "again"))
                if finished:
                    await self.controller.commit(finished, cause="copy-done")
                for done, end in ends:
                    if not done.done():
                        done.set_result(end)
        finally:
            self._copies_done_sending.discard(serial)
            for _, done in batch + self._copies_done.pop(serial, []):
                if not done.done():  # stopped (or our bug) with copies waiting: they end too
                    done.cancel()

    def _zero_track(self, size: int) -> bytes:
        zero = self._zeros.get(size)
        if zero is None:
            zero = self._zeros[size] = bytes(size)
        return zero


__all__ = ["COPY_IN_FLIGHT_MAX", "COPY_IN_FLIGHT_PER_DEVICE", "Copier"]
