# The names a storage administrator uses for a volume, as value types.
#
# Three names point at one volume (DESIGN.md section 1): the hardware address
# `SERIAL:SSID:LSS:CCA` is what the controller calls it, the device number is what one host
# calls it, and the volser is the label written on the volume itself. Every map, group and
# command in remcopy is keyed by these, so they are parsed in exactly one place, here.
#
# Rules this module keeps:
# - Values are frozen, slotted, keyword-only dataclasses: hashable, ordered, and safe to use
#   as dict keys and set members. `__init__` does no work; text (or loose ints) become values
#   only through named constructors: `X.parse(text)` and `HardwareAddress.of(...)`.
# - `str(x)` is the canonical text and `X.parse(str(x)) == x` for every value. Parsing accepts
#   lower case and surrounding whitespace; printing is always upper case and zero padded.
# - Input is hostile. Text longer than `_TEXT_MAX_CHARS` is refused before any other work,
#   characters are checked against explicit ASCII classes (never `str.isdigit`, `int()` or
#   `str.upper()` on unchecked text: those accept Unicode digits, underscores, `0x`, or turn
#   'ß' into 'SS'), and the only exception that escapes is `InvalidIdentifier`, whose message
#   names the bad value and the rule it broke.
# - No I/O, no clock, no imports beyond the standard library and `remcopy.errors`.
from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from remcopy.errors import InvalidIdentifier

__all__ = [
    "DEVICE_NUMBER_MAX",
    "DEVICE_NUMBER_RULE",
    "DeviceNumber",
    "device_number_order",
    "device_number_text",
    "HardwareAddress",
    "Volser",
    "parse_serial",
    "SERIAL_MIN",
    "SERIAL_MAX",
]

# The longest identifier is a hardware address, `999999:FFFF:FF:FF` (17 characters). 64 leaves
# room for generous whitespace and a device-number range while keeping every parse O(1).
_TEXT_MAX_CHARS: Final = 64
# How much of a bad value a message quotes; enough to recognise it, never a megabyte.
_SHOWN_MAX_CHARS: Final = 32

SERIAL_MIN: Final = 10000
SERIAL_MAX: Final = 999999
_SERIAL_RULE: Final = "5-6 decimal digits"
_VOLSER_RULE: Final = "1-6 characters from A-Z 0-9 @ # $"
_HARDWARE_ADDRESS_RULE: Final = "SERIAL:SSID:LSS:CCA (e.g. 64015:1A00:0A:3F)"

_SERIAL_RE: Final = re.compile(r"[1-9][0-9]{4,5}")
_HEX2_RE: Final = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4_RE: Final = re.compile(r"[0-9A-Fa-f]{4}")
# A device number: 4 hex digits (subchannel set 0), or 5 whose first is the set, 0-3.
_DEVICE_NUMBER_RE: Final = re.compile(r"[0-3]?[0-9A-Fa-f]{4}")
DEVICE_NUMBER_RULE: Final = "4 hex digits, or 5 with the subchannel set (0-3) first"
DEVICE_NUMBER_MAX: Final = 0x3FFFF
_VOLSER_CHARS: Final = frozenset(string.ascii_letters + string.digits + "@#$")
# A whole hardware address in one match: the fast path of `HardwareAddress.parse`, which reads
# tens of thousands of them per group load from the catalog. The same ASCII classes as the four
# field patterns above, so it accepts exactly what they accept together; anything it does not
# match goes through the field-by-field checks, which say what is wrong.
_HARDWARE_ADDRESS_RE: Final = re.compile(
    r"([1-9][0-9]{4,5}):([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})"
)
# `HardwareAddress.parse_many`: the expression above without its last field, and that field's
# every accepted spelling with its value (both cases: 22 x 22 entries).
_PREFIX_RE: Final = re.compile(r"([1-9][0-9]{4,5}):([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2})")
_HEX_DIGITS: Final = string.digits + "abcdefABCDEF"
_HEX2_VALUES: Final = {a + b: int(a + b, 16) for a in _HEX_DIGITS for b in _HEX_DIGITS}


def _show(text: str) -> str:
    """Quote a bad value for a message, shortened if it is long."""
    if len(text) <= _SHOWN_MAX_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_MAX_CHARS]!r}... ({len(text)} characters)"


def _text_of(value: object, kind: str, rule: str) -> str:
    """Return `value` stripped, or refuse it if it is not text or is too long to be `kind`."""
    if not isinstance(value, str):
        raise InvalidIdentifier(
            f"{kind} must be text (got a {type(value).__name__}): expected {rule}", kind=kind
        )
    if len(value) > _TEXT_MAX_CHARS:
        raise InvalidIdentifier(
            f"{_show(value)} is not a {kind}: too long: expected {rule}",
            kind=kind,
            text=value[:_SHOWN_MAX_CHARS],
        )
    return value.strip()


def _int_in_range(value: object, name: str, low: int, high: int, shown_range: str) -> int:
    """Check a loose int field for `HardwareAddress.of` and `DeviceNumber.of`."""
    # bool is an int subclass; True is not a serial number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidIdentifier(
            f"{name} must be an int in {shown_range} (got a {type(value).__name__})", kind=name
        )
    if not low <= value <= high:
        raise InvalidIdentifier(f"{name} must be in {shown_range} (got {value})", kind=name)
    return value


def parse_serial(value: object) -> int:
    """Return a controller serial (10000..999999) from its text or an int."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidIdentifier(
            f"controller serial must be text or an int (got a {type(value).__name__})",
            kind="controller serial",
        )
    if isinstance(value, int):
        return _int_in_range(value, "serial", SERIAL_MIN, SERIAL_MAX, "10000..999999")
    text = _text_of(value, "controller serial", _SERIAL_RULE)
    if _SERIAL_RE.fullmatch(text) is None:
        raise InvalidIdentifier(
            f"{_show(text)} is not a controller serial: expected {_SERIAL_RULE} (10000..999999)",
            kind="controller serial",
            text=text,
        )
    return int(text)


@dataclass(frozen=True, slots=True, kw_only=True, order=True, repr=False)
class HardwareAddress:
    """Where a volume lives: controller serial, subsystem id, logical subsystem, device."""

    serial: int
    """The controller's serial number, 10000..999999."""
    ssid: int
    """The subsystem identifier, 0..0xFFFF (4 hex digits)."""
    lss: int
    """The logical subsystem, 0..0xFF (2 hex digits)."""
    cca: int
    """The device within the LSS (channel connection address), 0..0xFF (2 hex digits)."""

    @classmethod
    def parse(cls, text: object) -> HardwareAddress:
        """Parse `SERIAL:SSID:LSS:CCA`, e.g. `64015:1A00:0A:3F`; hex may be lower case."""
        if isinstance(text, str) and len(text) <= _TEXT_MAX_CHARS:
            match = _HARDWARE_ADDRESS_RE.fullmatch(text.strip())
            if match is not None:
                serial, ssid, lss, cca = match.groups()
                return _address(int(serial), int(ssid, 16), int(lss, 16), int(cca, 16))
        kind = "hardware address"
        stripped = _text_of(text, kind, _HARDWARE_ADDRESS_RULE)
        parts = stripped.split(":")
        if len(parts) != 4:
            raise InvalidIdentifier(
                f"{_show(stripped)} is not a {kind}: expected {_HARDWARE_ADDRESS_RULE}",
                kind=kind,
                text=stripped,
            )
        serial_text, ssid_text, lss_text, cca_text = parts
        for name, field_text, pattern, rule in (
            ("serial", serial_text, _SERIAL_RE, _SERIAL_RULE),
            ("ssid", ssid_text, _HEX4_RE, "4 hex digits"),
            ("lss", lss_text, _HEX2_RE, "2 hex digits"),
            ("cca", cca_text, _HEX2_RE, "2 hex digits"),
        ):
            if pattern.fullmatch(field_text) is None:
                raise InvalidIdentifier(
                    f"{_show(stripped)} is not a {kind}: "
                    f"{name} must be {rule} (got {_show(field_text)})",
                    kind=kind,
                    text=stripped,
                )
        return cls(
            serial=int(serial_text),
            ssid=int(ssid_text, 16),
            lss=int(lss_text, 16),
            cca=int(cca_text, 16),
        )

    @classmethod
    def parse_many(cls, texts: Iterable[object]) -> list[HardwareAddress]:
        """`[parse(text) for text in texts]`, about three times faster for many addresses
        of few logical subsystems (a group load from the catalog parses 20,000).

        The devices of one LSS share `SERIAL:SSID:LSS`: that prefix is checked and converted
        once, and each address costs a split and a table lookup of its CCA. A text whose
        prefix does not match the prefix expression, or whose CCA is not 2 hex digits, goes
        through `parse` (whitespace, errors): so exactly what `parse` accepts is accepted,
        with the same values and the same errors."""
        prefixes: dict[str, tuple[int, int, int]] = {}
        out = []
        for text in texts:
            if isinstance(text, str) and len(text) <= _TEXT_MAX_CHARS:
                head, _, tail = text.rpartition(":")
                cca = _HEX2_VALUES.get(tail)
                fields = prefixes.get(head)
                if fields is None and cca is not None:
                    match = _PREFIX_RE.fullmatch(head)
                    if match is not None:
                        serial, ssid, lss = match.groups()
                        fields = prefixes[head] = (int(serial), int(ssid, 16), int(lss, 16))
                if fields is not None and cca is not None:
                    out.append(_address(fields[0], fields[1], fields[2], cca))
                    continue
            out.append(cls.parse(text))
        return out

    @classmethod
    def of(cls, *, serial: int, ssid: int, lss: int, cca: int) -> HardwareAddress:
        """Build an address from its four numbers, checking each one's range."""
        return cls(
            serial=_int_in_range(serial, "serial", SERIAL_MIN, SERIAL_MAX, "10000..999999"),
            ssid=_int_in_range(ssid, "ssid", 0, 0xFFFF, "0000..FFFF"),
            lss=_int_in_range(lss, "lss", 0, 0xFF, "00..FF"),
            cca=_int_in_range(cca, "cca", 0, 0xFF, "00..FF"),
        )

    @property
    def device_key(self) -> int:
        """The device's address on the wire inside one controller: `lss << 8 | cca`."""
        return self.lss << 8 | self.cca

    def __str__(self) -> str:
        return f"{self.serial}:{self.ssid:04X}:{self.lss:02X}:{self.cca:02X}"

    def __repr__(self) -> str:
        return f"HardwareAddress.parse({str(self)!r})"


# The slots' own setters (what object.__setattr__ would find by name).
_set_serial = HardwareAddress.__dict__["serial"].__set__
_set_ssid = HardwareAddress.__dict__["ssid"].__set__
_set_lss = HardwareAddress.__dict__["lss"].__set__
_set_cca = HardwareAddress.__dict__["cca"].__set__
_new = object.__new__


def _address(serial: int, ssid: int, lss: int, cca: int) -> HardwareAddress:
    """A HardwareAddress from fields the caller has checked (parse's expressions have). Not
    through the dataclass __init__: its keyword call and frozen field setting cost as much
    again as the parse, and a 10,000-pair group load parses 20,000 addresses."""
    address: HardwareAddress = _new(HardwareAddress)
    _set_serial(address, serial)
    _set_ssid(address, ssid)
    _set_lss(address, lss)
    _set_cca(address, cca)
    return address


@dataclass(frozen=True, slots=True, kw_only=True, order=True, repr=False)
class DeviceNumber:
    """A host's name for a device, meaningful only on that host: 4 hex digits in subchannel
    set 0, or 5 hex digits whose first is the subchannel set (1-3), as z/OS writes them:
    `1A3F` is device 1A3F of set 0, `21A3F` the same 4 digits in set 2 (docs/hosts-and-scan.md).
    """

    value: int
    """0..0x3FFFF: the subchannel set times 0x10000, plus the 4-digit number within it."""

    @classmethod
    def parse(cls, text: object) -> DeviceNumber:
        """Parse 4 hex digits (`1A3F`) or 5 with the subchannel set first (`11A3F`, `01A3F`
        is `1A3F`); lower case is accepted."""
        kind = "device number"
        stripped = _text_of(text, kind, DEVICE_NUMBER_RULE)
        if _DEVICE_NUMBER_RE.fullmatch(stripped) is None:
            raise InvalidIdentifier(
                f"{_show(stripped)} is not a {kind}: expected {DEVICE_NUMBER_RULE}",
                kind=kind,
                text=stripped,
            )
        return cls(value=int(stripped, 16))

    @classmethod
    def of(cls, value: int) -> DeviceNumber:
        """Build a device number from an int, checking its range."""
        return cls(value=_int_in_range(value, "device number", 0, DEVICE_NUMBER_MAX, "0000..3FFFF"))

    @classmethod
    def range_parse(cls, text: object) -> list[DeviceNumber]:
        """Parse `1A00-1AFF` (inclusive, start <= end, both in one subchannel set) or a single
        number, in ascending order."""
        kind = "device number range"
        rule = "START-END of 4 hex digits each, or 5 with the subchannel set first (e.g. 1A00-1AFF)"
        stripped = _text_of(text, kind, rule)
        start_text, dash, end_text = stripped.partition("-")
        if not dash:
            return [cls.parse(stripped)]
        try:
            start = cls.parse(start_text)
            end = cls.parse(end_text)
        except InvalidIdentifier as exc:
            raise InvalidIdentifier(
                f"{_show(stripped)} is not a {kind}: {exc.message}", kind=kind, text=stripped
            ) from None
        problem = None
        if start > end:
            problem = f"start {start} is after end {end}"
        elif start.subchannel_set != end.subchannel_set:
            problem = (
                f"start {start} is in subchannel set {start.subchannel_set}, end {end} in set "
                f"{end.subchannel_set}: a range stays in one set"
            )
        if problem is not None:
            raise InvalidIdentifier(
                f"{_show(stripped)} is not a {kind}: {problem}", kind=kind, text=stripped
            )
        return [cls(value=value) for value in range(start.value, end.value + 1)]

    @property
    def subchannel_set(self) -> int:
        return self.value >> 16

    def __str__(self) -> str:
        return device_number_text(self.value)

    def __repr__(self) -> str:
        return f"DeviceNumber.parse({str(self)!r})"


def device_number_order(text: str) -> tuple[int, str]:
    """Sort key of a device number as written: its numeric order (a 4-digit number of
    subchannel set 0 comes before every 5-digit one)."""
    return len(text), text.upper()


def device_number_text(value: int) -> str:
    """How a device number is written: 4 hex digits in subchannel set 0 (`1A3F`), 5 in sets
    1-3 (`11A3F`)."""
    return f"{value:04X}" if value < 0x10000 else f"{value:05X}"


@dataclass(frozen=True, slots=True, kw_only=True, order=True, repr=False)
class Volser:
    """A volume serial: the label in the volume's label track, 1-6 of `A-Z 0-9 @ # $`."""

    text: str
    """Upper case, 1-6 characters."""

    @classmethod
    def parse(cls, text: object) -> Volser:
        """Parse a volser, upper-casing it: `pay001` becomes `PAY001`."""
        kind = "volser"
        stripped = _text_of(text, kind, _VOLSER_RULE)
        # Check characters before upper-casing: Unicode upper() can change the length.
        bad = next((char for char in stripped if char not in _VOLSER_CHARS), None)
        problem = None
        if not stripped:
            problem = "it is empty"
        elif bad is not None:
            problem = f"{bad!r} is not allowed"
        elif len(stripped) > 6:
            problem = f"{len(stripped)} characters is too long"
        if problem is not None:
            raise InvalidIdentifier(
                f"{_show(stripped)} is not a {kind}: {problem}: expected {_VOLSER_RULE}",
                kind=kind,
                text=stripped,
            )
        return cls(text=stripped.upper())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Volser.parse({self.text!r})"
