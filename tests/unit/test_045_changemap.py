# Change maps: write-intent bits, copier clears, persistence of the mapped file.
from __future__ import annotations

from pathlib import Path

from remcopy.controller.changemap import ChangeMap

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
