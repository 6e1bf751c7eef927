# Scan: ask each controller, through one host's paths, what is behind every device number.
#
# Why: the seed's YKSCAN. A host knows device numbers; the controller knows the hardware
# address, the volser (from the volume's label), the capacity and the pair state. A scan
# builds the host's device map (device number <-> hardware address <-> volser) by asking the
# controllers — one identify request per controller carrying all of that controller's devices,
# every controller at once through the I/O engine — and lists every device that did not
# answer, with the reason, instead of dropping it.
#
# Rules this module keeps:
# - Offline devices are scanned like online ones (the flag is carried into the map).
# - A device whose controller reports a different SSID than the host's path says is a
#   failure naming both, not a silently wrong map entry.
# - The scan itself changes nothing; storing the map is the catalog's one transaction.
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from remcopy.errors import RemcopyError, error_from_wire
from remcopy.host.channel import Channel
from remcopy.host.definition import HostDefinition, HostDevice
from remcopy.host.engine import Job, JobResult
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress, device_number_text
from remcopy.wire.native import DeviceIdentity


@dataclass(frozen=True, slots=True, kw_only=True)
class ScannedDevice:
    number: int
    controller: str
    address: HardwareAddress
    volser: str
    capacity_bytes: int
    state: str
    role: str
    online: bool

    @property
    def device_number(self) -> str:
        return device_number_text(self.number)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanFailure:
    number: int
    controller: str
    reason: str

    @property
    def device_number(self) -> str:
        return device_number_text(self.number)


@dataclass(slots=True, kw_only=True)
class ControllerScan:
    controller: str
    devices: int = 0
    failures: int = 0
    requests: int = 0
    elapsed_s: float = 0.0


@dataclass(slots=True, kw_only=True)
class ScanResult:
    host: str
    scanned_at_ns: int
    devices: list[ScannedDevice] = field(default_factory=list)
    failures: list[ScanFailure] = field(default_factory=list)
    controllers: dict[str, ControllerScan] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.controllers.values())


Progress = Callable[[str, int, int], None]  # controller, devices done, devices total


def select(definition: HostDefinition, numbers: Iterable[int] | None) -> list[HostDevice]:
    """The host's devices, limited to the given device numbers when there are any."""
    devices = definition.devices()
    if numbers is None:
        return devices
    wanted = set(numbers)
    return [d for d in devices if d.number in wanted]


async def scan(
    session: HostSession,
    *,
    numbers: Iterable[int] | None = None,
    batch: bool = True,
    progress: Progress | None = None,
) -> ScanResult:
    """Identify every selected device through its controller; one request per controller."""
    definition = session.definition
    started = time.perf_counter()
    result = ScanResult(host=definition.name, scanned_at_ns=time.time_ns())
    by_controller: dict[str, list[HostDevice]] = {}
    for device in select(definition, numbers):
        by_controller.setdefault(device.controller, []).append(device)
    jobs: list[Job[tuple[DeviceIdentity, ...]]] = []
    for controller, devices in by_controller.items():
        result.controllers[controller] = ControllerScan(controller=controller)
        groups = [devices] if batch else [[d] for d in devices]
        for group in groups:
            jobs.append(Job(controller=controller, tag=group, run=_identify(group)))
    done: dict[str, int] = dict.fromkeys(by_controller, 0)

    def finished(job_result: JobResult[tuple[DeviceIdentity, ...]]) -> None:
        controller = job_result.job.controller
        group: list[HostDevice] = job_result.job.tag
        _collect(result, controller, group, job_result)
        done[controller] += len(group)
        if progress is not None:
            progress(controller, done[controller], len(by_controller[controller]))

    await session.engine.run_all(jobs, on_done=finished)
    result.devices.sort(key=lambda d: d.number)
    result.failures.sort(key=lambda f: f.number)
    result.elapsed_s = time.perf_counter() - started
    return result


def _identify(
    group: list[HostDevice],
) -> Callable[[Channel], Awaitable[tuple[DeviceIdentity, ...]]]:
    keys = tuple(d.key for d in group)

    async def run(channel: Channel) -> tuple[DeviceIdentity, ...]:
        return await channel.identify(keys)

    return run


def _collect(
    result: ScanResult,
    controller: str,
    group: list[HostDevice],
    job_result: JobResult[tuple[DeviceIdentity, ...]],
) -> None:
    stats = result.controllers[controller]
    stats.requests += job_result.attempts
    stats.elapsed_s = max(stats.elapsed_s, job_result.elapsed_s)
    if job_result.error is not None or job_result.value is None:
        reason = str(job_result.error or "no answer")
        for device in group:
            result.failures.append(
                ScanFailure(number=device.number, controller=controller, reason=reason)
            )
        stats.failures += len(group)
        return
    answers = {ident.device: ident for ident in job_result.value}
    for device in group:
        ident = answers.get(device.key)
        failure = _failure(device, ident)
        if failure is not None:
            result.failures.append(
                ScanFailure(number=device.number, controller=controller, reason=failure)
            )
            stats.failures += 1
            continue
        assert ident is not None
        result.devices.append(
            ScannedDevice(
                number=device.number,
                controller=controller,
                address=HardwareAddress.of(
                    serial=ident.serial, ssid=ident.ssid, lss=device.lss, cca=device.cca
                ),
                volser=ident.volser,
                capacity_bytes=ident.capacity_bytes,
                state=ident.state.name,
                role=ident.role.value,
                online=device.online,
            )
        )
        stats.devices += 1


def _failure(device: HostDevice, ident: DeviceIdentity | None) -> str | None:
    if ident is None:
        return "the controller did not answer for this device"
    if ident.status:
        err: RemcopyError = error_from_wire(ident.status, "")
        return f"{type(err).__name__}: {(err.__doc__ or '').strip()}"
    if ident.ssid != device.ssid:
        return (
            f"the host's path says SSID {device.ssid:04X}; the controller reports "
            f"SSID {ident.ssid:04X}"
        )
    return None
