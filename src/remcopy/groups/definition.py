# Group definitions: a name, options, and pairs given by whatever key is easiest — and their
# resolution, through the device maps, into hardware addresses.
#
# Why: an administrator names a pair by what they have at hand: the volser, the device
# numbers on a host they know, or the hardware addresses from a controller's report; for
# thousands of pairs, a range (`1A00-1AFF -> 2B00-2BFF`) or a CSV file. Every key is turned
# into the pair's two hardware addresses by looking in the hosts' device maps (the scan), so
# the stored group means the same thing on every host of the complex.
#
# File formats (docs/groups.md):
#   TOML: [group] name, mode, consistency_group, margin_ms, fence, csv; then [[pairs]] each with
#         one of: volser + secondary_volser | host + devices + secondary_devices (ranges) |
#         primary + secondary (hardware addresses).
#   CSV:  one pair per line, `PRIMARY,SECONDARY`, each a volser, HOST:DEVNUM or an address.
#
# Rules this module keeps:
# - A definition with any bad pair is rejected whole, with every bad line named: unknown
#   device, ambiguous volser (two addresses), primary and secondary on the same controller,
#   a secondary smaller than its primary, a device named twice, a device in another group.
# - Resolution is pure: it reads maps given to it and changes nothing.
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from remcopy import configfile
from remcopy.errors import ConfigError, InvalidIdentifier
from remcopy.groups.model import GroupOptions
from remcopy.ids import DeviceNumber, HardwareAddress, Volser
from remcopy.states import CopyMode, FencePolicy

# A CSV group of 100,000 pairs is about 4 MiB; refuse anything far larger before reading it.
CSV_SIZE_MAX_BYTES = 64 * 1024 * 1024


class MapEntryLike(Protocol):
    """What resolution needs from a device-map entry (catalog.records.MapEntry fits)."""

    @property
    def device_number(self) -> str: ...
    @property
    def hardware_address(self) -> str: ...
    @property
    def volser(self) -> str: ...
    @property
    def capacity_bytes(self) -> int: ...
    @property
    def controller(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PairKey:
    """One side of a pair as the definition names it, and where (for messages)."""

    text: str
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedPair:
    primary: HardwareAddress
    secondary: HardwareAddress
    volser: str
    where: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupSection(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@#$-]+$")
    mode: CopyMode = CopyMode.SYNC
    consistency_group: bool = True
    margin_ms: float = Field(default=50.0, ge=0, le=60_000)
    fence: FencePolicy = FencePolicy.NEVER
    csv: str | None = None
    """A CSV file of more pairs, relative to the definition's folder."""


class PairSection(_Strict):
    volser: str | None = None
    secondary_volser: str | None = None
    host: str | None = None
    devices: str | None = None
    secondary_devices: str | None = None
    secondary_host: str | None = None
    primary: str | None = None
    secondary: str | None = None


class GroupFile(_Strict):
    group: GroupSection
    pairs: list[PairSection] = Field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDefinition:
    name: str
    options: GroupOptions
    keys: tuple[tuple[PairKey, PairKey], ...]


def options_of(section: GroupSection) -> GroupOptions:
    return GroupOptions(
        mode=section.mode,
        consistency_group=section.consistency_group,
        fence=section.fence,
        margin_s=section.margin_ms / 1000,
    )


# Reading a definition: keys only, no lookups yet...


def load_group_definition(path: Path) -> GroupDefinition:
    source = str(path)
    data = configfile.validate(GroupFile, configfile.read_toml(path), source=source)
    problems: list[str] = []
    keys = list(_toml_keys(data.pairs, source, problems))
    if data.group.csv is not None:
        csv = data.group.csv
        csv_path = Path(csv) if Path(csv).is_absolute() else path.parent / csv
        keys.extend(csv_keys(_read_csv(csv_path), source=str(csv_path), problems=problems))
    if problems:
        raise configfile.problems_error(source, problems)
    if not keys:
        raise ConfigError(f"{source}: group {data.group.name} has no pairs: add [[pairs]] or csv")
    return GroupDefinition(name=data.group.name, options=options_of(data.group), keys=tuple(keys))


def _read_csv(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > CSV_SIZE_MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes is over {CSV_SIZE_MAX_BYTES}")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc


def csv_keys(text: str, *, source: str, problems: list[str]) -> Iterable[tuple[PairKey, PairKey]]:
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(cells) != 2 or not all(cells):
            problems.append(f"{where}: expected PRIMARY,SECONDARY (got {','.join(row)!r})")
            continue
        yield PairKey(text=cells[0], where=where), PairKey(text=cells[1], where=where)


def _toml_keys(
    pairs: Sequence[PairSection], source: str, problems: list[str]
) -> Iterable[tuple[PairKey, PairKey]]:
    for i, pair in enumerate(pairs):
        where = f"{source}: pairs[{i}]"
        if pair.volser is not None or pair.secondary_volser is not None:
            if pair.volser is None or pair.secondary_volser is None:
                problems.append(f"{where}: volser and secondary_volser go together")
                continue
            yield (
                PairKey(text=pair.volser, where=where),
                PairKey(text=pair.secondary_volser, where=where),
            )
        elif pair.devices is not None:
            if pair.host is None or pair.secondary_devices is None:
                problems.append(f"{where}: devices needs host and secondary_devices")
                continue
            try:
                firsts = DeviceNumber.range_parse(pair.devices)
                seconds = DeviceNumber.range_parse(pair.secondary_devices)
            except InvalidIdentifier as exc:
                problems.append(f"{where}: {exc}")
                continue
            if len(firsts) != len(seconds):
                problems.append(
                    f"{where}: {pair.devices} has {len(firsts)} devices but "
                    f"{pair.secondary_devices} has {len(seconds)}"
                )
                continue
            other = pair.secondary_host or pair.host
            for a, b in zip(firsts, seconds, strict=True):
                yield (
                    PairKey(text=f"{pair.host}:{a}", where=where),
                    PairKey(text=f"{other}:{b}", where=where),
                )
        elif pair.primary is not None and pair.secondary is not None:
            yield PairKey(text=pair.primary, where=where), PairKey(text=pair.secondary, where=where)
        else:
            problems.append(
                f"{where}: name the pair by volser + secondary_volser, "
                "host + devices + secondary_devices, or primary + secondary"
            )


# Resolving keys through the device maps...


class MapIndex:
    """The device maps of every host, indexed for the five keys."""

    def __init__(self, maps: Mapping[str, Sequence[MapEntryLike]]) -> None:
        self.by_volser: dict[str, set[str]] = {}
        self.by_host_device: dict[tuple[str, str], MapEntryLike] = {}
        self.by_address: dict[str, MapEntryLike] = {}
        self.controller_of: dict[tuple[str, str], str] = {}  # (host, address) -> controller
        self.number_of: dict[tuple[str, str], str] = {}  # (host, address) -> device number
        for host, entries in maps.items():
            for entry in entries:
                self.by_volser.setdefault(entry.volser, set()).add(entry.hardware_address)
                self.by_host_device[(host, entry.device_number)] = entry
                self.by_address.setdefault(entry.hardware_address, entry)
                self.controller_of[(host, entry.hardware_address)] = entry.controller
                self.number_of[(host, entry.hardware_address)] = entry.device_number
        self.hosts = set(maps)

    def address(self, key: PairKey) -> HardwareAddress:
        """The hardware address a key names; InvalidIdentifier naming the key otherwise."""
        text = key.text.strip()
        if text.count(":") == 3:
            address = HardwareAddress.parse(text)
            if str(address) not in self.by_address:
                raise InvalidIdentifier(f"{text}: unknown device: no scanned map has it")
            return address
        if ":" in text:
            host, _, number = text.partition(":")
            device = str(DeviceNumber.parse(number))
            if host not in self.hosts:
                raise InvalidIdentifier(f"{text}: unknown host {host!r}: scan it first")
            entry = self.by_host_device.get((host, device))
            if entry is None:
                raise InvalidIdentifier(
                    f"{text}: unknown device: host {host}'s map has no device {device}"
                )
            return HardwareAddress.parse(entry.hardware_address)
        volser = str(Volser.parse(text))
        candidates = sorted(self.by_volser.get(volser, ()))
        if not candidates:
            raise InvalidIdentifier(f"{volser}: unknown volser: no scanned map has it")
        if len(candidates) > 1:
            raise InvalidIdentifier(
                f"{volser}: ambiguous volser: it is at "
                f"{', '.join(candidates)}: name the pair by address"
            )
        return HardwareAddress.parse(candidates[0])

    def capacity(self, address: HardwareAddress) -> int:
        return self.by_address[str(address)].capacity_bytes

    def volser(self, address: HardwareAddress) -> str:
        return self.by_address[str(address)].volser


def resolve(
    definition: GroupDefinition, index: MapIndex, *, taken: Mapping[str, str] | None = None
) -> list[ResolvedPair]:
    """Every pair's two addresses; ConfigError naming every bad line, all at once.

    `taken` maps an address to the group that already has it (from the catalog).
    """
    taken = taken or {}
    problems: list[str] = []
    pairs: list[ResolvedPair] = []
    seen: dict[str, str] = {}
    for primary_key, secondary_key in definition.keys:
        where = primary_key.where
        try:
            primary = index.address(primary_key)
            secondary = index.address(secondary_key)
        except InvalidIdentifier as exc:
            problems.append(f"{where}: {exc}")
            continue
        bad = _pair_problems(primary, secondary, index, seen, taken, definition.name)
        if bad:
            problems.extend(f"{where}: {p}" for p in bad)
            continue
        seen[str(primary)] = where
        seen[str(secondary)] = where
        pairs.append(
            ResolvedPair(
                primary=primary, secondary=secondary, volser=index.volser(primary), where=where
            )
        )
    if problems:
        raise configfile.problems_error(f"group {definition.name}", problems)
    return pairs


def _pair_problems(
    primary: HardwareAddress,
    secondary: HardwareAddress,
    index: MapIndex,
    seen: dict[str, str],
    taken: Mapping[str, str],
    group: str,
) -> list[str]:
    out = []
    if primary.serial == secondary.serial:
        out.append(
            f"primary {primary} and secondary {secondary} are on the same controller "
            f"(serial {primary.serial})"
        )
    if index.capacity(secondary) < index.capacity(primary):
        out.append(
            f"secondary {secondary} holds {index.capacity(secondary)} bytes: less than "
            f"the primary {primary} ({index.capacity(primary)})"
        )
    for address in (primary, secondary):
        if str(address) in seen:
            out.append(f"duplicate: {address} is also in {seen[str(address)]}")
        other = taken.get(str(address))
        if other is not None and other != group:
            out.append(f"{address} is already in group {other}")
    return out


def definition_document(definition: GroupDefinition) -> dict[str, Any]:
    options = definition.options
    return {
        "mode": options.mode.value,
        "consistency_group": options.consistency_group,
        "fence": options.fence.value,
        "margin_s": options.margin_s,
    }
