"""Small OS helpers shared by the agent modules: commands, atomic files, netns sockets.

Python 3.11 has no ``os.setns``; the agent needs it to open sockets *inside* a
pod's network namespace (health checks of tiers bound to 127.0.0.1), so it is
called through libc. setns(CLONE_NEWNET) only affects the calling thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("edgeshot.agent")

CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ns_lock = threading.Lock()


class CommandError(RuntimeError):
    """A system command failed; the message carries its stderr."""


def run(args: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise CommandError with stderr on failure."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Steps:
    """Wall time of each step of a start or restore, in ms (``Instance.timings_ms``)."""

    def __init__(self) -> None:
        self.t0 = self.t = time.perf_counter()
        self.ms: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round(self.ms.get(name, 0.0) + (now - self.t) * 1000, 3)
        self.t = now

    def total(self) -> float:
        return (time.perf_counter() - self.t0) * 1000


def wait_readable(fd: int, timeout: float) -> bool:
    """True when ``fd`` has data (or EOF) within ``timeout`` s (poll: any fd number)."""
    import select
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(max(0, int(timeout * 1000))))


def is_root() -> bool:
    return os.geteuid() == 0


def write_private(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write a file atomically with mode 0600 (temp file, fsync, rename).

    ``durable=False`` skips the fsync: for runtime records (pod.json, slot records) that
    describe processes, which a machine crash ends anyway. The rename still makes the
    write atomic for every other process, an agent restarted after a crash included;
    an fsync costs 5-20 ms on a virtual disk, on every restore."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    write_private(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                  durable=durable)


def set_subreaper() -> None:
    """Become the reaper of orphaned pod inits (restored pods are detached from CRIU).

    Without it they would be reparented to PID 1, which here does not reap.
    """
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap(pid: int | None = None) -> None:
    """Collect exited children (one pid, or any) without blocking."""
    try:
        while True:
            got, _ = os.waitpid(pid if pid else -1, os.WNOHANG)
            if got == 0 or pid:
                return
    except ChildProcessError:
        return


def pid_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.01)
    return not pid_alive(pid)


def ns_inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def socket_in_netns(netns: str | Path, family: int = socket.AF_INET) -> socket.socket:
    """Create a TCP socket that lives in the network namespace at ``netns``."""
    with _ns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(str(netns), os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            try:
                return socket.socket(family, socket.SOCK_STREAM)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail back
                    raise OSError(ctypes.get_errno(), "setns back to own netns failed")
        finally:
            os.close(own)
            os.close(target)


def http_request(
    host: str,
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    netns: str | Path | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with ``Connection: close``; returns (status, body).

    Hand-rolled so it can run over a socket created inside a pod's netns and so
    the connection is closed before a dump (CRIU refuses established TCP).
    """
    sock = socket_in_netns(netns) if netns else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        hdrs = {"Host": f"{host}:{port}", "Connection": "close", "User-Agent": "edgeshot-agent"}
        hdrs.update(headers or {})
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head_raw, _, payload = raw.partition(b"\r\n\r\n")
    status_line = head_raw.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2:
        raise ConnectionError(f"malformed HTTP response from {host}:{port}")
    head_lines = head_raw.decode("latin-1").lower()
    if "transfer-encoding: chunked" in head_lines:
        payload = _dechunk(payload)
    return int(status_line[1]), payload


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)
