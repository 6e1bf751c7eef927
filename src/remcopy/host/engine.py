# The I/O engine: many controller requests at once, bounded, queued, timed out and retried.
#
# Why: the seed's YKIO. Scan and group operations talk to many controllers; doing it one
# request at a time is what made the old way take seconds per pair. The engine runs jobs
# concurrently with a bound on requests in flight (in total and per controller), keeps the
# rest queued, gives every attempt a deadline, retries what the controller said is retryable
# with exponential back-off, and reports a result per job: a failed job never fails the
# others.
#
# Batching is the caller's choice of job: a job for one controller may carry every device of
# that controller in one request (scan, group operations), which is what makes them fast.
#
# Rules this module keeps (TigerStyle: a limit on everything, units last):
# - At most `in_flight_max` jobs run at once, at most `per_controller_max` per controller.
# - At most `queue_max` jobs wait; more is refused up front, before anything is sent.
# - An attempt that exceeds `timeout_s` counts as a timeout and may be retried.
# - `statistics()` is a frozen snapshot.
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from remcopy.errors import InputError, RemcopyError, RequestTimeout
from remcopy.host.channel import Channel

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLimits:
    in_flight_max: int = 64
    per_controller_max: int = 8
    queue_max: int = 1_000_000
    retry_max: int = 3
    timeout_s: float = 10.0
    backoff_s: float = 0.005

    def __post_init__(self) -> None:
        for name in ("in_flight_max", "per_controller_max", "queue_max"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.retry_max < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise InputError("retry_max must be >= 0, timeout_s > 0 and backoff_s >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatistics:
    in_flight: int
    in_flight_peak: int
    queued: int
    completed: int
    failed: int
    retries: int
    timeouts: int


@dataclass(slots=True, kw_only=True)
class Job(Generic[T]):
    """One request (possibly carrying many devices) for one controller."""

    controller: str
    run: Callable[[Channel], Awaitable[T]]
    tag: Any = None
    """The caller's handle for the result (e.g. the device numbers the job covers)."""


@dataclass(slots=True, kw_only=True)
class JobResult(Generic[T]):
    job: Job[T]
    value: T | None = None
    error: RemcopyError | None = None
    attempts: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Counters:
    in_flight: int = 0
    in_flight_peak: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    timeouts: int = 0
    per_controller_peak: dict[str, int] = field(default_factory=dict)


class IOEngine:
    """Runs jobs over a host's channels within the limits."""

    def __init__(self, channels: Mapping[str, Channel], limits: EngineLimits | None = None) -> None:
        self.channels = channels
        self.limits = limits or EngineLimits()
        self._global = asyncio.Semaphore(self.limits.in_flight_max)
        self._per: dict[str, asyncio.Semaphore] = {}
        self._per_in_flight: dict[str, int] = {}
        self._c = _Counters()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<IOEngine controllers={len(self.channels)} in_flight={s.in_flight} "
            f"queued={s.queued} completed={s.completed} failed={s.failed}>"
        )

    def statistics(self) -> EngineStatistics:
        c = self._c
        return EngineStatistics(
            in_flight=c.in_flight,
            in_flight_peak=c.in_flight_peak,
            queued=c.queued,
            completed=c.completed,
            failed=c.failed,
            retries=c.retries,
            timeouts=c.timeouts,
        )

    def per_controller_peak(self) -> dict[str, int]:
        return dict(self._c.per_controller_peak)

    async def run_all(
        self,
        jobs: Sequence[Job[T]],
        *,
        on_done: Callable[[JobResult[T]], None] | None = None,
    ) -> list[JobResult[T]]:
        """Run every job; results in the order of `jobs`."""
        if len(jobs) > self.limits.queue_max:
            raise InputError(
                f"{len(jobs)} requests are over the engine's queue_max "
                f"{self.limits.queue_max}: nothing was sent"
            )
        for job in jobs:
            if job.controller not in self.channels:
                raise InputError(f"no channel to controller {job.controller!r}")
        self._c.queued += len(jobs)
        tasks = [asyncio.ensure_future(self._one(job, on_done)) for job in jobs]
        return list(await asyncio.gather(*tasks))

    async def _one(
        self, job: Job[T], on_done: Callable[[JobResult[T]], None] | None
    ) -> JobResult[T]:
        result: JobResult[T] = JobResult(job=job)
        started = time.perf_counter()
        per = self._per.setdefault(
            job.controller, asyncio.Semaphore(self.limits.per_controller_max)
        )
        channel = self.channels[job.controller]
        async with self._global, per:
            self._c.queued -= 1
            self._enter(job.controller)
            try:
                await self._attempts(job, channel, result)
            finally:
                self._leave(job.controller)
        result.elapsed_s = time.perf_counter() - started
        if result.error is None:
            self._c.completed += 1
        else:
            self._c.failed += 1
        if on_done is not None:
            on_done(result)
        return result

    async def _attempts(self, job: Job[T], channel: Channel, result: JobResult[T]) -> None:
        limits = self.limits
        while True:
            result.attempts += 1
            try:
                async with asyncio.timeout(limits.timeout_s):
                    result.value = await job.run(channel)
                result.error = None
                return
            except TimeoutError:
                self._c.timeouts += 1
                result.error = RequestTimeout(
                    f"controller {job.controller}: no answer within {limits.timeout_s} s"
                )
            except RemcopyError as exc:
                result.error = exc
                if isinstance(exc, RequestTimeout):
                    self._c.timeouts += 1
            if not result.error.retryable or result.attempts > limits.retry_max:
                return
            self._c.retries += 1
            await asyncio.sleep(limits.backoff_s * 2 ** (result.attempts - 1))

    def _enter(self, controller: str) -> None:
        c = self._c
        c.in_flight += 1
        c.in_flight_peak = max(c.in_flight_peak, c.in_flight)
        now = self._per_in_flight.get(controller, 0) + 1
        self._per_in_flight[controller] = now
        c.per_controller_peak[controller] = max(c.per_controller_peak.get(controller, 0), now)

    def _leave(self, controller: str) -> None:
        self._c.in_flight -= 1
        self._per_in_flight[controller] -= 1
