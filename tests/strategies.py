# Hypothesis strategies for remcopy's value types, kept in one place as attrs keeps its own.
#
# Each strategy builds values through the public constructors, over the whole valid range,
# boundaries included, so round-trip tests exercise exactly what a user could type. The
# `*_texts` strategies produce valid text in the loose forms `parse` accepts (lower case,
# surrounding whitespace) together with the value it must parse to.
from __future__ import annotations

from hypothesis import strategies as st

from remcopy.ids import (
    DEVICE_NUMBER_MAX,
    SERIAL_MAX,
    SERIAL_MIN,
    DeviceNumber,
    HardwareAddress,
    Volser,
)
from remcopy.states import PairAction, PairState

VOLSER_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@#$"

serials = st.integers(min_value=SERIAL_MIN, max_value=SERIAL_MAX)

hardware_addresses = st.builds(
    HardwareAddress.of,
    serial=serials,
    ssid=st.integers(min_value=0, max_value=0xFFFF),
    lss=st.integers(min_value=0, max_value=0xFF),
    cca=st.integers(min_value=0, max_value=0xFF),
)

device_numbers = st.builds(DeviceNumber.of, st.integers(min_value=0, max_value=DEVICE_NUMBER_MAX))

volsers = st.text(alphabet=VOLSER_ALPHABET, min_size=1, max_size=6).map(Volser.parse)

pair_states = st.sampled_from(PairState)
pair_actions = st.sampled_from(PairAction)

_padding = st.text(alphabet=" \t\n", max_size=3)


@st.composite
def loose_texts(draw: st.DrawFn, values: st.SearchStrategy[object]) -> tuple[str, object]:
    """Draw a value and a loose spelling of it: random case, whitespace around it."""
    value = draw(values)
    canonical = str(value)
    spelled = "".join(char.lower() if draw(st.booleans()) else char for char in canonical)
    return draw(_padding) + spelled + draw(_padding), value
