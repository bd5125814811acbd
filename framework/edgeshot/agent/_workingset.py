"""Working set: the pages the warm-up requests touch, prefetched by lazy restores.

This kernel has neither soft-dirty nor idle-page tracking, so (DESIGN.md) the
working set is recorded by a test restore of the fresh images with
``--lazy-pages``: the lazy-pages daemon logs each page fault it serves
(``#PF at 0x…``) while the warm-up requests run. Those pages are then marked
non-lazy in CRIU's pagemap images (their PE_LAZY flag cleared, splitting
entries), so a lazy restore reads them eagerly and only the rest arrives on
first touch. The daemon also pushes remaining pages in the background, so the
record is a lower bound of the true working set.

Pagemap images are tiny protobuf streams; the few fields involved are encoded
here directly rather than pulling in protobuf and pycriu.
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from pathlib import Path

PE_LAZY = 1 << 1
PAGE = 4096
_PF = re.compile(r"\b(\d+)-\d+: #PF at 0x([0-9a-f]+)")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _decode(msg: bytes) -> dict[int, int]:
    fields, i = {}, 0
    while i < len(msg):
        key, i = _varint(msg, i)
        if key & 7 != 0:
            raise ValueError("unexpected non-varint field in pagemap entry")
        fields[key >> 3], i = _varint(msg, i)
    return fields


def _encode(fields: dict[int, int]) -> bytes:
    return b"".join(_enc_varint(k << 3) + _enc_varint(v) for k, v in sorted(fields.items()))


def read_pagemap(path: Path) -> tuple[bytes, dict[int, int], list[dict[int, int]]]:
    """(magic header, head message, entries) of a pagemap-N.img."""
    data = path.read_bytes()
    header, i = data[:8], 8
    msgs = []
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i)
        msgs.append(_decode(data[i + 4:i + 4 + n]))
        i += 4 + n
    return header, msgs[0], msgs[1:]


def write_pagemap(path: Path, header: bytes, head: dict[int, int],
                  entries: list[dict[int, int]]) -> None:
    out = bytearray(header)
    for m in [head, *entries]:
        raw = _encode(m)
        out += struct.pack("<I", len(raw)) + raw
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(out))
    tmp.chmod(0o600)
    tmp.replace(path)


def _nr(e: dict[int, int]) -> int:
    return e.get(5) or e.get(2, 0)


def faults_from_log(log_text: str) -> dict[int, set[int]]:
    """pid -> page addresses the lazy-pages daemon served on demand."""
    out: dict[int, set[int]] = defaultdict(set)
    for pid, addr in _PF.findall(log_text):
        out[int(pid)].add(int(addr, 16) & ~(PAGE - 1))
    return dict(out)


def mark_eager(images: Path, faults: dict[int, set[int]]) -> dict[str, list[tuple[int, int]]]:
    """Clear PE_LAZY on the faulted pages; return the working set as runs per pid."""
    ws: dict[str, list[tuple[int, int]]] = {}
    for pid, pages in sorted(faults.items()):
        path = images / f"pagemap-{pid}.img"
        if not path.exists() or not pages:
            continue
        header, head, entries = read_pagemap(path)
        out: list[dict[int, int]] = []
        runs: list[tuple[int, int]] = []
        for e in entries:
            flags, start, n = e.get(4, 0), e[1], _nr(e)
            if not flags & PE_LAZY or not any(start <= p < start + n * PAGE for p in pages):
                out.append(e)
                continue
            # split into maximal runs of equal "hot" state
            run_start, run_hot = 0, (start in pages)
            for k in range(1, n + 1):
                hot = k < n and (start + k * PAGE) in pages
                if k == n or hot != run_hot:
                    piece = dict(e)
                    piece[1] = start + run_start * PAGE
                    piece[5] = k - run_start
                    piece[2] = 0
                    piece[4] = flags & ~PE_LAZY if run_hot else flags
                    out.append(piece)
                    if run_hot:
                        runs.append((piece[1], k - run_start))
                    run_start, run_hot = k, hot
        write_pagemap(path, header, head, out)
        if runs:
            ws[str(pid)] = runs
    return ws


def count_lazy(images: Path) -> tuple[int, int]:
    """(eager pages, lazy pages) over all pagemaps of an image dir."""
    eager = lazy = 0
    for p in images.glob("pagemap-*.img"):
        _, _, entries = read_pagemap(p)
        for e in entries:
            if e.get(4, 0) & PE_LAZY:
                lazy += _nr(e)
            else:
                eager += _nr(e)
    return eager, lazy
