# Tests for remcopy.ids: canonical text round trips, the exact wording of every refusal, and
# hostile input that must never raise anything but InvalidIdentifier.
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remcopy.errors import InputError, InvalidIdentifier
from remcopy.ids import (
    DEVICE_NUMBER_MAX,
    DeviceNumber,
    HardwareAddress,
    Volser,
    device_number_order,
    parse_serial,
)
from strategies import (
    VOLSER_ALPHABET,
    device_numbers,
    hardware_addresses,
    loose_texts,
    serials,
    volsers,
)

# Round trips ---------------------------------------------------------------------------------


@given(hardware_addresses)
def test_HardwareAddress_round_trip(address: HardwareAddress) -> None:
    """Parsing the text of any hardware address gives the same address back."""
    assert HardwareAddress.parse(str(address)) == address


@given(device_numbers)
def test_DeviceNumber_round_trip(number: DeviceNumber) -> None:
    """Parsing the text of any device number gives the same device number back."""
    assert DeviceNumber.parse(str(number)) == number


def test_DeviceNumber_subchannel_sets() -> None:
    """5 hex digits name a device in subchannel set 1-3 (z/OS's spelling); set 0 is written
    with 4, and a leading 0 of 5 digits is set 0."""
    number = DeviceNumber.parse("21a3f")
    assert (number.value, number.subchannel_set, str(number)) == (0x21A3F, 2, "21A3F")
    assert DeviceNumber.parse("01A3F") == DeviceNumber.parse("1A3F")
    assert str(DeviceNumber.parse("01A3F")) == "1A3F"
    assert [str(n) for n in DeviceNumber.range_parse("11AFE-11B01")] == [
        "11AFE",
        "11AFF",
        "11B00",
        "11B01",
    ]
    assert str(DeviceNumber.of(DEVICE_NUMBER_MAX)) == "3FFFF"
    with pytest.raises(InvalidIdentifier, match=r"must be in 0000\.\.3FFFF \(got 262144\)"):
        DeviceNumber.of(DEVICE_NUMBER_MAX + 1)


@given(st.lists(device_numbers, min_size=2, max_size=8))
def test_device_number_order_is_numeric(numbers: list[DeviceNumber]) -> None:
    """Sorting device numbers as written (catalog rows) by device_number_order sorts them by
    value: every number of set 0 before any of set 1, and so on."""
    texts = sorted((str(n) for n in numbers), key=device_number_order)
    assert texts == [str(n) for n in sorted(numbers)]


@given(volsers)
def test_Volser_round_trip(volser: Volser) -> None:
    """Parsing the text of any volser gives the same volser back."""
    assert Volser.parse(str(volser)) == volser


@given(serials)
def test_parse_serial_round_trip(serial: int) -> None:
    """A serial parses from its decimal text and from the int itself."""
    assert parse_serial(str(serial)) == serial
    assert parse_serial(serial) == serial


@given(st.one_of(loose_texts(hardware_addresses), loose_texts(device_numbers)))
def test_parse_accepts_lower_case_and_whitespace(case: tuple[str, object]) -> None:
    """Lower-case hex and surrounding whitespace parse to the canonical value."""
    text, value = case
    assert type(value).parse(text) == value  # type: ignore[attr-defined]


@given(st.text(alphabet=VOLSER_ALPHABET.lower(), min_size=1, max_size=6))
def test_Volser_parse_upper_cases(text: str) -> None:
    """A lower-case volser is upper-cased."""
    assert str(Volser.parse(f" {text}\t")) == text.upper()


# Canonical text and properties ---------------------------------------------------------------


def test_HardwareAddress_canonical_text() -> None:
    """An address prints upper-case hex, zero padded, as SERIAL:SSID:LSS:CCA."""
    address = HardwareAddress.of(serial=64015, ssid=0x1A00, lss=0x0A, cca=0x3F)
    assert str(address) == "64015:1A00:0A:3F"
    assert HardwareAddress.parse(" 64015:1a00:0a:3f\n") == address
    assert str(HardwareAddress.of(serial=999999, ssid=0, lss=0, cca=0)) == "999999:0000:00:00"


def test_HardwareAddress_device_key() -> None:
    """The device key is lss << 8 | cca."""
    address = HardwareAddress.parse("64015:1A00:0A:3F")
    assert address.device_key == 0x0A3F
    assert HardwareAddress.parse("64015:1A00:FF:FF").device_key == 0xFFFF


def test_DeviceNumber_canonical_text() -> None:
    """A device number prints as 4 upper-case hex digits."""
    assert str(DeviceNumber.parse("1a3f")) == "1A3F"
    assert str(DeviceNumber.of(0x0A)) == "000A"
    assert DeviceNumber.parse("FFFF").value == 0xFFFF


def test_values_are_hashable_and_ordered() -> None:
    """Values are equal by content, hash alike, and sort by their fields."""
    low = HardwareAddress.parse("64015:1A00:0A:3F")
    high = HardwareAddress.parse("64015:1A00:0B:00")
    assert {low, HardwareAddress.parse("64015:1a00:0a:3f")} == {low}
    assert sorted([high, low]) == [low, high]
    assert HardwareAddress.parse("10000:FFFF:FF:FF") < low
    assert sorted([DeviceNumber.parse("1A01"), DeviceNumber.parse("0FFF")])[0].value == 0x0FFF
    assert Volser.parse("A") < Volser.parse("B")


def test_values_are_frozen_and_slotted() -> None:
    """Values cannot be changed after construction and carry no __dict__."""
    volser = Volser.parse("PAY001")
    with pytest.raises(dataclasses.FrozenInstanceError):
        volser.text = "X"  # type: ignore[misc]
    assert not hasattr(volser, "__dict__")


def test_repr_is_the_named_constructor() -> None:
    """repr shows the canonical text through the parse constructor."""
    assert repr(HardwareAddress.parse("64015:1a00:0a:3f")) == (
        "HardwareAddress.parse('64015:1A00:0A:3F')"
    )
    assert repr(DeviceNumber.parse("1a3f")) == "DeviceNumber.parse('1A3F')"
    assert repr(Volser.parse("pay001")) == "Volser.parse('PAY001')"


def test_DeviceNumber_range_parse() -> None:
    """A range is inclusive and ascending; a single number is a range of one."""
    numbers = DeviceNumber.range_parse("1a00-1AFF")
    assert len(numbers) == 256
    assert (str(numbers[0]), str(numbers[-1])) == ("1A00", "1AFF")
    assert DeviceNumber.range_parse(" 1A00 - 1A01 ") == [
        DeviceNumber.parse("1A00"),
        DeviceNumber.parse("1A01"),
    ]
    assert DeviceNumber.range_parse("1A3F") == [DeviceNumber.parse("1A3F")]
    assert DeviceNumber.range_parse("1A3F-1A3F") == [DeviceNumber.parse("1A3F")]
    assert len(DeviceNumber.range_parse("0000-FFFF")) == 0x10000


def test_parse_serial_boundaries() -> None:
    """Serials run from 10000 to 999999 inclusive."""
    assert parse_serial("10000") == 10000
    assert parse_serial(" 999999 ") == 999999
    for bad in ("9999", "1000000", "010000", 9999, 1000000):
        with pytest.raises(InvalidIdentifier):
            parse_serial(bad)


# Refusals: the exact words -------------------------------------------------------------------

RULE_HA = "expected SERIAL:SSID:LSS:CCA (e.g. 64015:1A00:0A:3F)"
RULE_VOLSER = "expected 1-6 characters from A-Z 0-9 @ # $"
RULE_DEVNO = "4 hex digits, or 5 with the subchannel set (0-3) first"

MESSAGES = [
    (DeviceNumber.parse, "1A3G", f"'1A3G' is not a device number: expected {RULE_DEVNO}"),
    (DeviceNumber.parse, "", f"'' is not a device number: expected {RULE_DEVNO}"),
    (DeviceNumber.parse, "1A3", f"'1A3' is not a device number: expected {RULE_DEVNO}"),
    (DeviceNumber.parse, "0x1A", f"'0x1A' is not a device number: expected {RULE_DEVNO}"),
    (DeviceNumber.parse, "1_A3", f"'1_A3' is not a device number: expected {RULE_DEVNO}"),
    (
        DeviceNumber.parse,
        "\u0661\u0662\u0663\u0664",
        f"'\u0661\u0662\u0663\u0664' is not a device number: expected {RULE_DEVNO}",
    ),
    (
        DeviceNumber.parse,
        None,
        f"device number must be text (got a NoneType): expected {RULE_DEVNO}",
    ),
    (DeviceNumber.parse, "41A3F", f"'41A3F' is not a device number: expected {RULE_DEVNO}"),
    (DeviceNumber.parse, "001A3F", f"'001A3F' is not a device number: expected {RULE_DEVNO}"),
    (
        DeviceNumber.range_parse,
        "FF00-10010",
        "'FF00-10010' is not a device number range: start FF00 is in subchannel set 0, end "
        "10010 in set 1: a range stays in one set",
    ),
    (
        DeviceNumber.range_parse,
        "1AFF-1A00",
        "'1AFF-1A00' is not a device number range: start 1AFF is after end 1A00",
    ),
    (
        DeviceNumber.range_parse,
        "1A00-1AZZ",
        "'1A00-1AZZ' is not a device number range: "
        f"'1AZZ' is not a device number: expected {RULE_DEVNO}",
    ),
    (
        DeviceNumber.range_parse,
        "1A00-1A01-1A02",
        "'1A00-1A01-1A02' is not a device number range: "
        f"'1A01-1A02' is not a device number: expected {RULE_DEVNO}",
    ),
    (
        HardwareAddress.parse,
        "64015:1A00:0A",
        f"'64015:1A00:0A' is not a hardware address: {RULE_HA}",
    ),
    (
        HardwareAddress.parse,
        "64015:1A00:0A:3F:00",
        f"'64015:1A00:0A:3F:00' is not a hardware address: {RULE_HA}",
    ),
    (
        HardwareAddress.parse,
        "64015:1A00:G1:3F",
        "'64015:1A00:G1:3F' is not a hardware address: lss must be 2 hex digits (got 'G1')",
    ),
    (
        HardwareAddress.parse,
        "6401:1A00:0A:3F",
        "'6401:1A00:0A:3F' is not a hardware address: "
        "serial must be 5-6 decimal digits (got '6401')",
    ),
    (
        HardwareAddress.parse,
        "64015:1A0:0A:3F",
        "'64015:1A0:0A:3F' is not a hardware address: ssid must be 4 hex digits (got '1A0')",
    ),
    (
        HardwareAddress.parse,
        "64015:1A00:0A:3",
        "'64015:1A00:0A:3' is not a hardware address: cca must be 2 hex digits (got '3')",
    ),
    (
        Volser.parse,
        "PAY-01",
        f"'PAY-01' is not a volser: '-' is not allowed: {RULE_VOLSER}",
    ),
    (Volser.parse, "  ", f"'' is not a volser: it is empty: {RULE_VOLSER}"),
    (
        Volser.parse,
        "PAYROLL",
        f"'PAYROLL' is not a volser: 7 characters is too long: {RULE_VOLSER}",
    ),
    (
        Volser.parse,
        "stra\u00dfe",
        f"'stra\u00dfe' is not a volser: '\u00df' is not allowed: {RULE_VOLSER}",
    ),
    (Volser.parse, "\ufb00", f"'\ufb00' is not a volser: '\ufb00' is not allowed: {RULE_VOLSER}"),
    (
        parse_serial,
        "1234",
        "'1234' is not a controller serial: expected 5-6 decimal digits (10000..999999)",
    ),
    (parse_serial, 9999, "serial must be in 10000..999999 (got 9999)"),
    (parse_serial, True, "controller serial must be text or an int (got a bool)"),
    (parse_serial, 1.5, "controller serial must be text or an int (got a float)"),
    (
        DeviceNumber.parse,
        "F" * 100_000,
        "'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'... (100000 characters) is not a device number: "
        f"too long: expected {RULE_DEVNO}",
    ),
]


@pytest.mark.parametrize(("parse", "value", "message"), MESSAGES)
def test_refusal_message(parse: object, value: object, message: str) -> None:
    """Each refusal names the bad value and the rule it broke, in these exact words."""
    with pytest.raises(InvalidIdentifier) as caught:
        parse(value)  # type: ignore[operator]
    assert str(caught.value) == message
    assert isinstance(caught.value, InputError)


OF_MESSAGES = [
    ({"serial": 9999}, "serial must be in 10000..999999 (got 9999)"),
    ({"ssid": 0x10000}, "ssid must be in 0000..FFFF (got 65536)"),
    ({"lss": 256}, "lss must be in 00..FF (got 256)"),
    ({"cca": -1}, "cca must be in 00..FF (got -1)"),
    ({"lss": "0A"}, "lss must be an int in 00..FF (got a str)"),
    ({"cca": True}, "cca must be an int in 00..FF (got a bool)"),
]


@pytest.mark.parametrize(("override", "message"), OF_MESSAGES)
def test_HardwareAddress_of_refuses_out_of_range(override: dict[str, object], message: str) -> None:
    """HardwareAddress.of names the field, its range and the value that arrived."""
    fields: dict[str, object] = {"serial": 64015, "ssid": 0x1A00, "lss": 0x0A, "cca": 0x3F}
    fields.update(override)
    with pytest.raises(InvalidIdentifier) as caught:
        HardwareAddress.of(**fields)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_DeviceNumber_of_refuses_out_of_range() -> None:
    """DeviceNumber.of accepts 0..0x3FFFF only (subchannel sets 0-3)."""
    assert DeviceNumber.of(0x3FFFF).value == 0x3FFFF
    for bad in (0x40000, -1):
        with pytest.raises(InvalidIdentifier, match=r"device number must be in 0000\.\.3FFFF"):
            DeviceNumber.of(bad)


def test_InvalidIdentifier_carries_kind_and_text() -> None:
    """The error holds the kind of identifier expected and the text that arrived."""
    with pytest.raises(InvalidIdentifier) as caught:
        Volser.parse(" PAY-01 ")
    assert (caught.value.kind, caught.value.text) == ("volser", "PAY-01")


# Hostile input -------------------------------------------------------------------------------

PARSERS = [
    HardwareAddress.parse,
    DeviceNumber.parse,
    DeviceNumber.range_parse,
    Volser.parse,
    parse_serial,
]
PARSER_IDS = [parse.__qualname__ for parse in PARSERS]

# Text near the valid forms reaches deeper into the parsers than uniform random text does.
near_valid_texts = st.text(alphabet="0123456789abcdefABCDEFG:-@#$ \t\n\x00\u0661\ufb00\u00df")
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@pytest.mark.parametrize("parse", PARSERS, ids=PARSER_IDS)
@given(text=st.one_of(st.text(), near_valid_texts, anything))
def test_garbage_raises_only_InvalidIdentifier(parse: object, text: object) -> None:
    """Any input either parses to a value that round-trips or raises InvalidIdentifier."""
    try:
        value = parse(text)  # type: ignore[operator]
    except InvalidIdentifier:
        return
    if isinstance(value, list):
        assert all(DeviceNumber.parse(str(number)) == number for number in value)
    elif not isinstance(value, int):
        assert type(value).parse(str(value)) == value


@pytest.mark.parametrize("parse", PARSERS, ids=PARSER_IDS)
def test_huge_input_is_refused_quickly(parse: object) -> None:
    """A ten-megabyte string is refused without scanning it, and the message stays short."""
    huge = " " + "1A00:" * 2_000_000
    with pytest.raises(InvalidIdentifier) as caught:
        parse(huge)  # type: ignore[operator]
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("text", ["\ud800", "1A3F\x00", "\x00", "1A\u20283F", "\u0661\u0662:"])
@pytest.mark.parametrize("parse", PARSERS, ids=PARSER_IDS)
def test_odd_characters_are_refused(parse: object, text: str) -> None:
    """Lone surrogates, NUL and Unicode separators and digits are refused cleanly."""
    with pytest.raises(InvalidIdentifier):
        parse(text)  # type: ignore[operator]


def test_unicode_whitespace_around_is_stripped() -> None:
    """Surrounding whitespace of any kind is stripped, as str.strip does."""
    assert DeviceNumber.parse("\u20281a3f\u3000") == DeviceNumber.parse("1A3F")


# Many at once ----------------------------------------------------------------------------------


def _parsed_or_refusal(text: object) -> object:
    try:
        return HardwareAddress.parse(text)
    except InvalidIdentifier as exc:
        return ("refused", str(exc), exc.kind, exc.text)


@given(
    st.lists(
        st.one_of(
            hardware_addresses.map(str),
            loose_texts(hardware_addresses).map(lambda case: case[0]),
            near_valid_texts,
            st.text(),
            anything,
        ),
        max_size=20,
    )
)
def test_HardwareAddress_parse_many_is_parse_of_each(texts: list[object]) -> None:
    """parse_many gives what parse gives for each text, in order, and refuses the first text
    parse refuses with parse's own error (same message, kind and text)."""
    expected = [_parsed_or_refusal(text) for text in texts]
    refused = [i for i, value in enumerate(expected) if isinstance(value, tuple)]
    if not refused:
        assert HardwareAddress.parse_many(texts) == expected
        return
    with pytest.raises(InvalidIdentifier) as caught:
        HardwareAddress.parse_many(texts)
    first = expected[refused[0]]
    assert ("refused", str(caught.value), caught.value.kind, caught.value.text) == first


def test_HardwareAddress_parse_many_shares_prefixes_not_values() -> None:
    """Addresses of one LSS share their prefix's work; each still gets its own value, and a
    prefix first seen with a bad CCA is not remembered as good."""
    texts = ["64015:1A00:0A:3f", "64015:1A00:0A:40", "64015:1a00:0a:FF", "64015:1A00:0A:00"]
    assert HardwareAddress.parse_many(texts) == [HardwareAddress.parse(t) for t in texts]
    assert [a.cca for a in HardwareAddress.parse_many(texts)] == [0x3F, 0x40, 0xFF, 0x00]
    with pytest.raises(InvalidIdentifier, match="cca must be 2 hex digits"):
        HardwareAddress.parse_many(["64015:1A00:0A:3G", "64015:1A00:0A:3F"])
    with pytest.raises(InvalidIdentifier, match="serial must be"):
        HardwareAddress.parse_many(["64015:1A00:0A:3F", "06401:1A00:0A:3F"])
    assert HardwareAddress.parse_many([" 64015:1A00:0A:3F\t"]) == [
        HardwareAddress.parse("64015:1A00:0A:3F")
    ]
