# Change maps: write-intent bits, copier clears, persistence of the mapped file.
from __future__ import annotations

import os
from pathlib import Path

import pytest

from remcopy.controller.changemap import FILE_NAME, ChangeMap, ChangeMapFile
from remcopy.errors import VolumeIOError

TRACK = 4096


def _map(tmp_path: Path, tracks: int = 20) -> ChangeMap:
    return ChangeMap(tmp_path / "d.map", tracks, TRACK)


def test_ChangeMap_marks_every_track_a_range_touches_and_survives_reopening(tmp_path: Path):
    """A range across a boundary sets both tracks, and the bits are in the file."""
    cm = _map(tmp_path)
    cm.mark(TRACK - 1, 2)
    cm.mark(10 * TRACK, 3 * TRACK)
    assert list(cm.dirty_tracks()) == [0, 1, 10, 11, 12]
    cm.close()  # no flush: the mapping's page cache is the file (what kill -9 leaves)
    again = _map(tmp_path)
    assert list(again.dirty_tracks()) == [0, 1, 10, 11, 12]
    again.close()


def test_ChangeMap_intent_clears_on_release_unless_really_changed(tmp_path: Path):
    """A write-intent alone is cleared by its release; a real change in between keeps it."""
    cm = _map(tmp_path)
    a = cm.mark_intent(0, TRACK)
    b = cm.mark_intent(100, 10)  # a second write to the same track, also in flight
    assert cm.count() == 1
    cm.release(a)
    assert cm.count() == 1, "still one write in flight on the track"
    cm.release(b)
    assert cm.count() == 0
    c = cm.mark_intent(5 * TRACK, 1)
    cm.mark(5 * TRACK, 1)  # e.g. the update failed: the track really differs
    cm.release(c)
    assert list(cm.dirty_tracks()) == [5]
    cm.close()


def test_ChangeMap_intent_on_a_dirty_track_keeps_it_and_blocks_the_copier(tmp_path: Path):
    """A track that needs its copy stays marked; the copier cannot clear it mid-write."""
    cm = _map(tmp_path)
    cm.mark_all()
    generation = cm.generation()
    intent = cm.mark_intent(3 * TRACK, 1)
    assert not cm.clear_if(3, generation), "a write to the track is in flight"
    cm.release(intent)
    assert cm.is_set(3), "the track still needs its copy"
    assert cm.clear_if(3, generation)
    assert cm.clear_if(4, generation)
    cm.mark(6 * TRACK, 1)
    assert not cm.clear_if(6, generation), "re-marked after the copy was read"
    assert cm.count() == 18
    cm.close()


def test_ChangeMap_merge_ors_another_map(tmp_path: Path):
    """Failback's union: tracks set on either side are set after the merge."""
    cm = _map(tmp_path)
    other = ChangeMap(tmp_path / "o.map", 20, TRACK)
    cm.mark(0, 1)
    other.mark(19 * TRACK, 1)
    cm.merge(other.to_bytes())
    assert list(cm.dirty_tracks()) == [0, 19]
    cm.close()
    other.close()


# One file per controller...


def _file(folder: Path, devices: dict[int, int]) -> ChangeMapFile:
    return ChangeMapFile(folder, {key: (tracks, TRACK) for key, tracks in devices.items()})


def test_ChangeMapFile_keeps_each_devices_bits_apart_and_across_reopening(tmp_path: Path):
    """Devices share one file: each map's bits are its own, and are there after a reopen
    with no flush (the page cache is the file, as after kill -9)."""
    maps = _file(tmp_path, {0x0A00: 20, 0x0A01: 40_000, 0x0B00: 1})
    maps.maps[0x0A00].mark(0, 2 * TRACK)
    maps.maps[0x0A01].mark(39_999 * TRACK, 1)
    maps.maps[0x0B00].mark(0, 1)
    assert [m.count() for m in maps.maps.values()] == [2, 1, 1]
    maps.close()
    again = _file(tmp_path, {0x0A00: 20, 0x0A01: 40_000, 0x0B00: 1})
    assert list(again.maps[0x0A00].dirty_tracks()) == [0, 1]
    assert list(again.maps[0x0A01].dirty_tracks()) == [39_999]
    assert list(again.maps[0x0B00].dirty_tracks()) == [0]
    again.maps[0x0A01].flush()
    again.flush_all()
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    assert os.stat(tmp_path / FILE_NAME).st_mode & 0o777 == 0o600


def test_ChangeMapFile_holds_one_descriptor_for_any_number_of_devices(tmp_path: Path):
    """2,000 devices cost the one descriptor of the mapping, not one each."""
    before = len(os.listdir("/proc/self/fd"))
    maps = _file(tmp_path, dict.fromkeys(range(2000), 16))
    assert len(os.listdir("/proc/self/fd")) - before <= 1
    maps.close()


def test_ChangeMapFile_migrates_maps_from_their_own_files_once(tmp_path: Path):
    """Per-device files of the older layout are read into the one file and removed."""
    old = ChangeMap(tmp_path / "0A00.map", 20, TRACK)
    old.mark(5 * TRACK, 1)
    old.close()
    maps = _file(tmp_path, {0x0A00: 20, 0x0A01: 20})
    assert maps.migrated == 1
    assert list(maps.maps[0x0A00].dirty_tracks()) == [5]
    assert maps.maps[0x0A01].count() == 0
    maps.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def test_ChangeMapFile_keeps_bits_when_devices_come_and_go(tmp_path: Path):
    """A device added gets a clean map and the others keep theirs; a device no longer
    configured keeps its slot, so configuring it again finds its bits."""
    maps = _file(tmp_path, {1: 20, 2: 20})
    maps.maps[1].mark(0, 1)
    maps.maps[2].mark(TRACK, 1)
    maps.close()
    grown = _file(tmp_path, {1: 20, 3: 50})
    assert list(grown.maps[1].dirty_tracks()) == [0]
    assert grown.maps[3].count() == 0
    assert set(grown.maps) == {1, 3}
    grown.close()
    back = _file(tmp_path, {1: 20, 2: 20, 3: 50})
    assert list(back.maps[2].dirty_tracks()) == [1]
    back.close()


def test_ChangeMapFile_refuses_a_device_whose_track_count_changed(tmp_path: Path):
    """A volume that no longer matches its map is refused, naming the device; the file is
    left as it was."""
    maps = _file(tmp_path, {0x0A00: 20})
    maps.maps[0x0A00].mark(0, 1)
    maps.close()
    stored = (tmp_path / FILE_NAME).read_bytes()
    with pytest.raises(VolumeIOError, match="device 0A00 has 20 tracks there, its volume 21"):
        _file(tmp_path, {0x0A00: 21})
    assert (tmp_path / FILE_NAME).read_bytes() == stored


def test_ChangeMapFile_refuses_a_damaged_file(tmp_path: Path):
    (tmp_path / FILE_NAME).write_bytes(b"not a change map file")
    with pytest.raises(VolumeIOError, match="not a change-map file"):
        _file(tmp_path, {1: 20})
