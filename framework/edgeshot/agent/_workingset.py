"""Working set: the pages the warm-up requests touch, prefetched by lazy restores.

This kernel has neither soft-dirty nor idle-page tracking, so (docs/architecture.md) the
working set is recorded by a test restore of the fresh images with
``--lazy-pages`` while the warm-up requests run. CRIU's own lazy-pages daemon
cannot record it: as soon as the restore finishes it pushes every remaining
page in the background, so only the first few faults show in its log; held
back from that, it never retries a copy the kernel refused with EAGAIN (a
page fault racing an munmap/madvise in the app), so the app hangs. The test
restore is served instead by ``FaultRecorder`` below: it speaks CRIU's
lazy-pages protocol, serves each fault from the images and nothing else, and
records every page it served. Those pages are then marked non-lazy in CRIU's
pagemap images (their PE_LAZY flag cleared, splitting entries), so a lazy
restore reads them eagerly and only the rest arrives on first touch.

Pagemap images are tiny protobuf streams; the few fields involved are encoded
here directly rather than pulling in protobuf and pycriu.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import mmap
import os
import re
import select
import socket
import struct
import threading
from collections import defaultdict
from pathlib import Path

PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2
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


GAP = 0  # cold runs of at most this many pages between or beside hot ones are read too


def mark_eager(images: Path, faults: dict[int, set[int]], *,
               gap: int = GAP) -> dict[str, list[tuple[int, int]]]:
    """Clear PE_LAZY on the faulted pages; return the working set as runs per pid.

    Short cold runs (``gap`` pages or fewer) between or beside hot pages of one entry are
    marked too: a few more pages read at restore, far fewer pagemap entries (CRIU's
    lazy-pages daemon seeks its pagemap linearly for every request it serves)."""
    ws: dict[str, list[tuple[int, int]]] = {}
    for pid, pages in sorted(faults.items()):
        path = images / f"pagemap-{pid}.img"
        if not path.exists() or not pages:
            continue
        hot_pages = sorted(pages)
        header, head, entries = read_pagemap(path)
        out: list[dict[int, int]] = []
        runs: list[tuple[int, int]] = []
        for e in entries:
            flags, start, n = e.get(4, 0), e[1], _nr(e)
            end = start + n * PAGE
            i = bisect.bisect_left(hot_pages, start)
            if not flags & PE_LAZY or i == len(hot_pages) or hot_pages[i] >= end:
                out.append(e)
                continue
            hot = [False] * n
            while i < len(hot_pages) and hot_pages[i] < end:
                hot[(hot_pages[i] - start) // PAGE] = True
                i += 1
            k = 0  # fill short cold runs: between hot pages, or at the entry's edges
            while k < n:
                if hot[k]:
                    k += 1
                    continue
                j = k
                while j < n and not hot[j]:
                    j += 1
                if j - k <= gap and (k > 0 or j < n):
                    hot[k:j] = [True] * (j - k)
                k = j
            run_start = 0
            for k in range(1, n + 1):
                if k == n or hot[k] != hot[run_start]:
                    piece = dict(e)
                    piece[1] = start + run_start * PAGE
                    piece[5] = k - run_start
                    piece[2] = 0
                    piece[4] = flags & ~PE_LAZY if hot[run_start] else flags
                    out.append(piece)
                    if hot[run_start]:
                        runs.append((piece[1], k - run_start))
                    run_start = k
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


# -- recording: a minimal lazy-pages server ------------------------------------------------
LAZY_PAGES_RESTORE_FINISHED = 0x52535446  # CRIU's "ReSTore Finished" word (criu/uffd.c)
UFFD_EVENT_PAGEFAULT, UFFD_EVENT_FORK, UFFD_EVENT_REMAP = 0x12, 0x13, 0x14
UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP = 0x15, 0x16
UFFDIO_UNREGISTER = 0x8010AA01  # _IOR(0xAA, 1, struct uffdio_range)
UFFDIO_WAKE = 0x8010AA02  # _IOR(0xAA, 2, struct uffdio_range)
UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 3, struct uffdio_copy)
UFFDIO_ZEROPAGE = 0xC020AA04  # _IOWR(0xAA, 4, struct uffdio_zeropage)
_MSG = 32  # sizeof(struct uffd_msg)


class _Task:
    """The lazy pages of one restored task, as its images hold them."""

    def __init__(self, images: Path, pid: int) -> None:
        _, head, entries = read_pagemap(images / f"pagemap-{pid}.img")
        self.pages = os.open(images / f"pages-{head[1]}.img", os.O_RDONLY | os.O_CLOEXEC)
        self.starts: list[int] = []
        self.runs: list[tuple[int, int, int]] = []  # (vaddr, nr, offset in pages-N.img)
        off = 0
        for e in entries:
            flags, n = e.get(4, 0), _nr(e)
            if flags & PE_PRESENT and not flags & PE_PARENT:
                if flags & PE_LAZY:
                    self.starts.append(e[1])
                    self.runs.append((e[1], n, off))
                off += n * PAGE

    def offset(self, addr: int) -> int | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0:
            start, n, off = self.runs[i]
            if addr < start + n * PAGE:
                return off + addr - start
        return None


class FaultRecorder:
    """Serves the page faults of a ``criu restore --lazy-pages`` from the images, on demand
    only (no background push), and records the pages it served.

    It listens where ``criu restore`` looks for the lazy-pages daemon
    (``<work dir>/lazy-pages.socket``) and speaks its protocol: per task an int pid, then
    (pid > 0) one byte carrying the task's userfaultfd (SCM_RIGHTS); then the "restore
    finished" word. Page faults are served with UFFDIO_COPY from ``pages-N.img`` (zero
    pages where the images hold none); a copy refused with EAGAIN (the app's memory map
    was changing) is retried once the pending events are read; removed ranges are
    unregistered, remapped ones followed. ``stop()`` returns the pages served per task.
    """

    def __init__(self, sock_path: Path, images: Path) -> None:
        from ._logpump import _sock_addr
        self.images = images
        self.listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        addr, dfd = _sock_addr(sock_path)
        try:
            self.listen.bind(addr)
        finally:
            if dfd is not None:
                os.close(dfd)
        self.listen.listen(1)
        self.faults: dict[int, set[int]] = defaultdict(set)
        self.error: BaseException | None = None
        self._tasks: dict[int, _Task] = {}
        self._uffds: dict[int, tuple[int, list[tuple[int, int, int]]]] = {}  # fd -> pid, remaps
        self._retry: list[tuple[int, int]] = []
        self._buf = mmap.mmap(-1, PAGE)
        self._src = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="fault-recorder", daemon=True)
        self._thread.start()

    # -- the server thread ---------------------------------------------------------
    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.listen, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        conn: socket.socket | None = None
        try:
            while True:
                for fd, _ev in poller.poll(1 if self._retry else None):
                    if fd == self._stop_r:
                        return
                    if fd == self.listen.fileno():
                        conn, _ = self.listen.accept()
                        poller.unregister(self.listen)
                        poller.register(conn, select.POLLIN)
                    elif conn is not None and fd == conn.fileno():
                        if not self._control(conn, poller):
                            poller.unregister(conn)
                            conn.close()
                            conn = None
                    elif fd in self._uffds:
                        self._events(fd, poller)
                self._retry_copies()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def _control(self, conn: socket.socket, poller: select.poll) -> bool:
        word = conn.recv(4, socket.MSG_WAITALL)
        if len(word) < 4:
            return False  # criu restore is done with the socket
        (pid,) = struct.unpack("i", word)
        if pid == LAZY_PAGES_RESTORE_FINISHED or pid <= 0:
            return True  # finished, or a zombie (no userfaultfd follows)
        _, anc, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(4))
        for lvl, typ, raw in anc:
            if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                for fd in struct.unpack(f"{len(raw) // 4}i", raw):
                    if pid not in self._tasks:
                        self._tasks[pid] = _Task(self.images, pid)
                    self._uffds[fd] = (pid, [])
                    poller.register(fd, select.POLLIN)
        return True

    def _events(self, fd: int, poller: select.poll) -> None:
        try:
            data = os.read(fd, _MSG * 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd, poller)
            return
        for i in range(0, len(data) - _MSG + 1, _MSG):
            event = data[i]
            a, b, c = struct.unpack_from("QQQ", data, i + 8)
            if event == UFFD_EVENT_PAGEFAULT:
                self._fault(fd, b & ~(PAGE - 1))
            elif event == UFFD_EVENT_FORK:
                child = a & 0xFFFFFFFF
                pid, remaps = self._uffds[fd]
                self._uffds[child] = (pid, list(remaps))
                poller.register(child, select.POLLIN)
            elif event == UFFD_EVENT_REMAP:
                self._uffds[fd][1].insert(0, (b, b + c, a - b))  # new range -> image address
            elif event in (UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP):
                if event == UFFD_EVENT_REMOVE:  # the range stays mapped: stop serving it
                    try:
                        fcntl.ioctl(fd, UFFDIO_UNREGISTER, struct.pack("QQ", a, b - a))
                    except OSError:
                        pass
                self._retry = [(f, x) for f, x in self._retry if not (f == fd and a <= x < b)]

    def _fault(self, fd: int, addr: int) -> None:
        pid, remaps = self._uffds[fd]
        img = addr
        for start, end, delta in remaps:
            if start <= img < end:
                img += delta
        off = self._tasks[pid].offset(img)
        try:
            if off is None:
                fcntl.ioctl(fd, UFFDIO_ZEROPAGE, bytearray(struct.pack("QQQq", addr, PAGE, 0, 0)))
            else:
                self._buf[:] = os.pread(self._tasks[pid].pages, PAGE, off)
                fcntl.ioctl(fd, UFFDIO_COPY, bytearray(struct.pack("QQQQq", addr, self._src,
                                                                   PAGE, 0, 0)))
                self.faults[pid].add(img)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:  # the map was changing: read the events, retry
                self._retry.append((fd, addr))
            elif exc.errno == errno.EEXIST:  # served already (another thread's fault)
                fcntl.ioctl(fd, UFFDIO_WAKE, struct.pack("QQ", addr, PAGE))
                if off is not None:
                    self.faults[pid].add(img)
            elif exc.errno not in (errno.ESRCH, errno.ENOSPC, errno.ENOENT):
                raise

    def _retry_copies(self) -> None:
        todo, self._retry = self._retry, []
        for fd, addr in todo:
            if fd in self._uffds:
                self._fault(fd, addr)

    def _drop(self, fd: int, poller: select.poll) -> None:
        poller.unregister(fd)
        self._uffds.pop(fd, None)
        os.close(fd)

    # -- the caller's side -----------------------------------------------------------
    def stop(self) -> dict[int, set[int]]:
        """Stop serving (kill the restored tasks first) and return the pages served."""
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        for fd in list(self._uffds):
            os.close(fd)
        self._uffds.clear()
        for t in self._tasks.values():
            os.close(t.pages)
        self._tasks.clear()
        self.listen.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        if self.error is not None:
            raise RuntimeError(f"fault recorder failed: {self.error!r}") from self.error
        return dict(self.faults)
