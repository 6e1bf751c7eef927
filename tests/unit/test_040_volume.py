# Volumes as files: the label round-trips, I/O lands at the right place, bad files are named.
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remcopy.controller.volume import BadVolumeFile, Volume
from remcopy.errors import InputError, OutOfRange
from remcopy.ids import Volser

TRACK = 4096


def _volume(tmp_path: Path, tracks: int = 8) -> Volume:
    return Volume.create(
        tmp_path / "v.vol", volser=Volser.parse("pay001"), tracks=tracks, track_size_bytes=TRACK
    )


def test_Volume_create_then_open_reads_the_label(tmp_path: Path):
    """A created volume opens again with its volser, geometry and a sparse file."""
    _volume(tmp_path).close()
    vol = Volume.open(tmp_path / "v.vol")
    assert (str(vol.volser), vol.tracks, vol.track_size_bytes) == ("PAY001", 8, TRACK)
    assert vol.capacity_bytes == 8 * TRACK
    assert os.stat(tmp_path / "v.vol").st_size == 9 * TRACK  # label track + data
    assert vol.pread(0, vol.capacity_bytes) == bytes(vol.capacity_bytes)
    vol.close()


def test_Volume_create_refuses_an_existing_file(tmp_path: Path):
    """Creating over an existing file is refused and leaves it alone."""
    (tmp_path / "v.vol").write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        _volume(tmp_path)
    assert (tmp_path / "v.vol").read_bytes() == b"precious"


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 8 * TRACK - 1), st.binary(min_size=1, max_size=3 * TRACK)),
        max_size=12,
    )
)
def test_Volume_writes_at_any_offset_read_back(tmp_path_factory, ops):
    """Writes at any offset and length, across tracks, read back like a bytearray model."""
    vol = _volume(tmp_path_factory.mktemp("v"))
    model = bytearray(vol.capacity_bytes)
    for offset, data in ops:
        data = data[: vol.capacity_bytes - offset]
        vol.pwrite(offset, data)
        model[offset : offset + len(data)] = data
    assert vol.pread(0, vol.capacity_bytes) == model
    # Data lives after the label track, never in it.
    assert Volume.open(vol.path).volser == Volser.parse("PAY001")
    vol.close()


def test_Volume_refuses_io_outside_and_changes_nothing(tmp_path: Path):
    """Reads and writes that reach past either end are refused before the file is touched."""
    vol = _volume(tmp_path)
    vol.pwrite(vol.capacity_bytes - 1, b"z")
    for offset, length in ((vol.capacity_bytes, 1), (vol.capacity_bytes - 1, 2), (-1, 1)):
        with pytest.raises(OutOfRange, match=f"offset={offset} length={length}"):
            vol.pwrite(offset, b"q" * length)
        with pytest.raises(OutOfRange):
            vol.pread(offset, length)
    assert vol.pread(vol.capacity_bytes - 2, 2) == b"\0z"
    vol.close()


def test_Volume_relabel_and_zero(tmp_path: Path):
    """Relabel survives reopening; zero clears exactly the range."""
    vol = _volume(tmp_path)
    vol.pwrite(0, b"\xff" * 3 * TRACK)
    vol.zero(TRACK - 1, TRACK + 2)
    assert vol.pread(0, 3 * TRACK) == b"\xff" * (TRACK - 1) + bytes(TRACK + 2) + b"\xff" * (
        TRACK - 1
    )
    vol.relabel(Volser.parse("NEW#1"))
    vol.flush()
    vol.close()
    assert str(Volume.open(tmp_path / "v.vol").volser) == "NEW#1"


def test_Volume_open_names_what_is_wrong_with_a_bad_file(tmp_path: Path):
    """Not a volume, a damaged label, a truncated file and a missing file each say so."""
    junk = tmp_path / "junk.vol"
    junk.write_bytes(os.urandom(10000))
    with pytest.raises(BadVolumeFile, match="no remcopy label"):
        Volume.open(junk)
    _volume(tmp_path).close()
    path = tmp_path / "v.vol"
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF
    damaged = tmp_path / "damaged.vol"
    damaged.write_bytes(raw)
    with pytest.raises(BadVolumeFile, match="checksum mismatch"):
        Volume.open(damaged)
    os.truncate(path, 5 * TRACK)
    with pytest.raises(BadVolumeFile, match="truncated"):
        Volume.open(path)
    with pytest.raises(Exception, match="cannot open"):
        Volume.open(tmp_path / "missing.vol")
