"""Working-set marking in CRIU's pagemap images (pure logic, no CRIU needed)."""

from __future__ import annotations

import struct

from edgeshot.agent import _workingset as W

BASE = 0x7F0000000000


def _pagemap(tmp_path, entries):
    path = tmp_path / "pagemap-2.img"
    W.write_pagemap(path, struct.pack("<II", 0x56084025, 0x4FA5B20E), {1: 2}, entries)
    return path


def test_faulted_pages_become_eager_with_short_gaps_filled(tmp_path):
    flags = W.PE_PRESENT | W.PE_LAZY
    path = _pagemap(tmp_path, [
        {1: BASE, 2: 0, 4: flags, 5: 40},
        {1: BASE + 64 * W.PAGE, 2: 0, 4: W.PE_PRESENT, 5: 4},  # already eager: untouched
        {1: BASE + 80 * W.PAGE, 2: 0, 4: flags, 5: 10},  # nothing faulted: stays lazy
    ])
    faults = {2: {BASE + 2 * W.PAGE, BASE + 5 * W.PAGE, BASE + 30 * W.PAGE}}
    ws = W.mark_eager(tmp_path, faults, gap=8)
    _, head, entries = W.read_pagemap(path)
    assert head == {1: 2}
    got = [(e[1] - BASE) // W.PAGE for e in entries], [W._nr(e) for e in entries], \
        [bool(e.get(4, 0) & W.PE_LAZY) for e in entries]
    # pages 0-1 (an edge run of 2) and 3-4 (a gap of 2) are read too; 6-29 (24 pages)
    # and 31-39 (9 > 8) stay lazy
    assert got == ([0, 6, 30, 31, 64, 80], [6, 24, 1, 9, 4, 10],
                   [False, True, False, True, False, True])
    assert ws == {"2": [(BASE, 6), (BASE + 30 * W.PAGE, 1)]}
    assert W.count_lazy(tmp_path) == (6 + 1 + 4, 24 + 9 + 10)


def test_no_faults_leave_the_images_alone(tmp_path):
    path = _pagemap(tmp_path, [{1: BASE, 2: 0, 4: W.PE_PRESENT | W.PE_LAZY, 5: 3}])
    before = path.read_bytes()
    assert W.mark_eager(tmp_path, {}) == {}
    assert path.read_bytes() == before
