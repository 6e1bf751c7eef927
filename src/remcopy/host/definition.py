# A host's I/O definition: which device numbers it has, and the path to each.
#
# Why: a host knows its devices only by device number (DESIGN.md section 1). To reach one it
# needs a path: a controller endpoint, the SSID and LSS, and the device's CCA within the LSS.
# Two hosts see the same volume under different device numbers; the hardware address and the
# volser are learned by asking the controller (scan), never written here.
#
# File format (TOML), e.g. docs/hosts-and-scan.md:
#   plain_tcp = true                      # only instead of [tls], only to loopback controllers
#   [host]
#   name = "hosta"
#   secret = "s3cret-hosta-key"           # proves the host to its controllers (HMAC)
#   [tls]                                 # the host's certificate (remcopy pki issue --name hosta)
#   ca = "pki/ca.pem"
#   cert = "pki/hosta.pem"
#   key = "pki/hosta.key"                 # 0600
#   [[controllers]]
#   name = "cntla"
#   address = "127.0.0.1:7401"
#   [[paths]]
#   devices = "1A00-1A3F"                 # device-number range
#   controller = "cntla"
#   ssid = "1A00"
#   lss = "0A"
#   cca = "00"                            # CCA of the first device; the rest follow
#   online = true                         # offline devices are scanned and operated, not used
#
# Rules this module keeps:
# - The file is checked whole and every bad line is named (overlapping ranges, a range that
#   runs past CCA FF, bad hex, an unknown controller), all at once.
# - `devices()` expands the paths into one `HostDevice` per device number, sorted.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from remcopy import configfile, secretfiles
from remcopy.configfile import format_address
from remcopy.controller import atrest
from remcopy.controller.config import Address, Cca, Lss, Secret, Ssid, TlsSection, is_loopback
from remcopy.errors import InvalidIdentifier
from remcopy.ids import DeviceNumber, device_number_text
from remcopy.tls import TlsFiles


def _range(value: object) -> tuple[int, int]:
    try:
        numbers = DeviceNumber.range_parse(value)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None
    return numbers[0].value, numbers[-1].value


def _text(first: int, last: int) -> str:
    return f"{device_number_text(first)}-{device_number_text(last)}"


DeviceRange = Annotated[tuple[int, int], BeforeValidator(_range)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSection(_Strict):
    name: str = Field(min_length=1, max_length=64)
    secret: Secret
    """Read from secret_file (0600) when the file names one."""
    secret_file: Path | None = None


class ControllerEntry(_Strict):
    name: str = Field(min_length=1, max_length=64)
    address: Address
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class PathEntry(_Strict):
    devices: DeviceRange
    controller: str
    ssid: Ssid
    lss: Lss
    cca: Cca
    online: bool = True


class HostDefinition(_Strict):
    host: HostSection
    tls: TlsSection | None = None
    """The host's certificate; every controller's certificate must name that controller."""
    plain_tcp: bool = False
    """No TLS: only to controllers on loopback addresses that also run with plain_tcp."""
    controllers: list[ControllerEntry] = Field(min_length=1)
    paths: list[PathEntry] = Field(min_length=1)

    @property
    def name(self) -> str:
        return self.host.name

    def tls_files(self) -> TlsFiles | None:
        if self.plain_tcp or self.tls is None:
            return None
        return TlsFiles(ca=self.tls.ca, cert=self.tls.cert, key=self.tls.key)

    def controller(self, name: str) -> ControllerEntry:
        for entry in self.controllers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def devices(self) -> list[HostDevice]:
        out = []
        for path in self.paths:
            first, last = path.devices
            for offset, number in enumerate(range(first, last + 1)):
                out.append(
                    HostDevice(
                        number=number,
                        controller=path.controller,
                        ssid=path.ssid,
                        lss=path.lss,
                        cca=path.cca + offset,
                        online=path.online,
                    )
                )
        return sorted(out, key=lambda d: d.number)

    def to_document(self) -> dict[str, Any]:
        """The definition as the file spells it (JSON-able), so it parses back the same."""
        links: dict[str, Any] = (
            {"plain_tcp": True}
            if self.plain_tcp
            else {"tls": {k: str(v) for k, v in self.tls.model_dump().items()}}
            if self.tls is not None
            else {}
        )
        return {
            **links,
            # A secret kept in a file is stored by its path, never by its value.
            "host": {"name": self.host.name}
            | (
                {"secret_file": str(self.host.secret_file)}
                if self.host.secret_file is not None
                else {"secret": self.host.secret}
            ),
            "controllers": [
                {"name": c.name, "address": format_address(c.address), "timeout_s": c.timeout_s}
                for c in self.controllers
            ],
            "paths": [
                {
                    "devices": _text(*p.devices),
                    "controller": p.controller,
                    "ssid": f"{p.ssid:04X}",
                    "lss": f"{p.lss:02X}",
                    "cca": f"{p.cca:02X}",
                    "online": p.online,
                }
                for p in self.paths
            ],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDevice:
    """One device number of a host and its path."""

    number: int
    controller: str
    ssid: int
    lss: int
    cca: int
    online: bool

    @property
    def key(self) -> int:
        """The device's key on its controller (LSS << 8 | CCA)."""
        return self.lss << 8 | self.cca

    @property
    def device_number(self) -> str:
        return device_number_text(self.number)


def _link_checks(definition: HostDefinition, source: str) -> list[str]:
    if not definition.plain_tcp:
        if definition.tls is None:
            return [
                f"{source}: tls: missing: every link is TLS (add [tls] with ca, cert and key, "
                "made with `remcopy pki`), or set plain_tcp = true for loopback controllers"
            ]
        problem = atrest.private_problem(definition.tls.key, "TLS key")
        return [f"{source}: tls.key: {problem}"] if problem else []
    return [
        f"{source}: plain_tcp: refused: controllers[{i}].address {format_address(c.address)} "
        "is not a loopback address (plain TCP only on loopback)"
        for i, c in enumerate(definition.controllers)
        if not is_loopback(c.address[0])
    ]


def _cross_checks(definition: HostDefinition, source: str) -> list[str]:
    problems = _link_checks(definition, source)
    names: dict[str, int] = {}
    for i, entry in enumerate(definition.controllers):
        if entry.name in names:
            problems.append(
                f"{source}: controllers[{i}].name: duplicate controller "
                f"{entry.name!r} (also controllers[{names[entry.name]}])"
            )
        names.setdefault(entry.name, i)
    spans: list[tuple[int, int, int]] = []
    targets: dict[tuple[str, int, int], int] = {}
    for i, path in enumerate(definition.paths):
        where = f"{source}: paths[{i}]"
        first, last = path.devices
        if path.controller not in names:
            problems.append(
                f"{where}.controller: unknown controller {path.controller!r}: "
                f"expected one of {sorted(names)}"
            )
        count = last - first + 1
        if path.cca + count - 1 > 0xFF:
            problems.append(
                f"{where}.devices: {count} devices from CCA {path.cca:02X} run past "
                f"CCA FF (the range is longer than the LSS has room for)"
            )
        for j, (a, b, _k) in enumerate(spans):
            if first <= b and a <= last:
                problems.append(
                    f"{where}.devices: {_text(first, last)} overlaps paths[{j}] ({_text(a, b)})"
                )
        spans.append((first, last, i))
        for offset in range(count):
            target = (path.controller, path.lss, path.cca + offset)
            if target in targets and targets[target] != i:
                problems.append(
                    f"{where}.cca: device {path.controller} LSS {path.lss:02X} CCA "
                    f"{path.cca + offset:02X} is also reached by "
                    f"paths[{targets[target]}]"
                )
                break
            targets[target] = i
    return problems


def parse_host_definition(
    data: dict[str, Any], *, source: str, base: Path | None = None
) -> HostDefinition:
    """Check a host definition; a [host] secret_file is read (relative to `base`)."""
    host = data.get("host")
    problems = secretfiles.resolve_files(
        [host] if isinstance(host, dict) else None, base or Path(), ""
    )
    if problems:
        raise configfile.problems_error(source, [f"{source}: host.{p}" for p in problems])
    definition = configfile.validate(HostDefinition, data, source=source)
    problems = _cross_checks(definition, source)
    if problems:
        raise configfile.problems_error(source, problems)
    return definition


def load_host_definition(path: Path) -> HostDefinition:
    """Read a host file; relative [tls] paths are taken from the file's folder."""
    data = configfile.read_toml(path)
    section = data.get("tls")
    if isinstance(section, dict):
        data["tls"] = {
            k: str(path.parent / v) if isinstance(v, str) else v for k, v in section.items()
        }
    return parse_host_definition(data, source=str(path), base=path.parent)
