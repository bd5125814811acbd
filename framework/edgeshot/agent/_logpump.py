"""Log pump: tier stdout/stderr arrive through pipes and land in rotated 0600 files.

Why pipes and not files: CRIU refuses to restore a process whose open regular
file changed size since the dump, and logs keep growing. A pipe end is
replaced at restore (``--inherit-fd fd[N]:pipe:[inode]``) by a fresh pipe
whose read end goes to the pump, so logs never break a restore.

One resident pump per state directory serves every pod of the server: the
agent hands it each new pod's read ends over a unix socket (``SCM_RIGHTS``),
so a start or restore spawns no process for its logs (a Python start-up is
tens of ms of CPU, taken from the restore it runs beside on a 2-core server).
The pump runs in its own session, outside the pods: it survives an agent
restart (the next agent connects to it again) and exits once no pod writes
to it and no agent is connected.

    python -I -S _logpump.py --serve SOCKET LOCK READY_FD     (the resident pump)
    python -m edgeshot.agent._logpump DIR NAME=FD [NAME=FD ...] (one pod; older agents)

Only the standard library is used, so the pump starts with ``-I -S`` (no site,
no user paths): it is spawned once, but quickly.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
KEEP = 3
MAX_FDS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SOCK_NAME = ".pump.sock"
CAPS = ("add", "relay")  # what this pump does (a newer agent may meet an older pump)
LOCK_NAME = ".pump.lock"


class _Sink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = self._open()

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        self.f.write(data)
        if self.f.tell() >= MAX_BYTES:
            self.f.close()
            for i in range(KEEP - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
            self.f = self._open()

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass


def _drain(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    """Copy what a pipe has into its sink; unregister it at EOF."""
    try:
        data = os.read(key.fd, 65536)
    except InterruptedError:
        return
    except OSError:
        data = b""
    if not data:
        sel.unregister(key.fd)
        os.close(key.fd)
        key.data[1].close()
        return
    try:
        key.data[1].write(data)
    except OSError:
        pass  # a full disk must not stall the pod: drop the lines


# -- the resident pump ------------------------------------------------------------------
def _sock_addr(path: Path) -> tuple[str, int | None]:
    """A bindable address for ``path`` (unix socket paths are limited to 107 bytes: longer
    ones go through /proc/self/fd of their directory)."""
    if len(os.fsencode(str(path))) < 100:
        return str(path), None
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dfd}/{path.name}", dfd


def serve(sock_path: Path, lock_path: Path, ready_fd: int) -> int:
    """Serve pipes handed over on ``sock_path`` until no pipe and no agent is left."""
    os.chdir("/")
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    addr, dfd = _sock_addr(sock_path)
    try:
        os.unlink(addr)
    except FileNotFoundError:
        pass
    old = os.umask(0o077)
    lsock.bind(addr)
    os.umask(old)
    if dfd is not None:
        os.close(dfd)
    lsock.listen(64)
    sel.register(lsock, selectors.EVENT_READ, ("listen", None))
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    clients = 0
    pipes = 0
    while True:
        timeout = (NUDGE_S if any(r.release_at is not None for r in _RELAYS) else
                   None if clients or pipes or _RELAYS else 0.05)
        for key, _ in sel.select(timeout=timeout):
            kind = key.data[0]
            if kind == "relay":
                key.data[1].ready(key.fileobj)
            elif kind == "pipe":
                _drain(sel, key)
                if key.fd not in sel.get_map():
                    pipes -= 1
            elif kind == "listen":
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    continue
                if _trusted(conn):
                    sel.register(conn, selectors.EVENT_READ, ("client", conn))
                    clients += 1
            else:
                conn = key.data[1]
                added = _client_message(sel, conn)
                if added is None:
                    sel.unregister(conn)
                    conn.close()
                    clients -= 1
                else:
                    pipes += added
        now = time.monotonic()
        for relay in list(_RELAYS):
            relay.tick(now)
        if not clients and not pipes and not _RELAYS:
            done, conn = _may_exit(lsock, lock_path)
            if conn is not None and _trusted(conn):
                sel.register(conn, selectors.EVENT_READ, ("client", conn))
                clients += 1
            elif done:
                addr, dfd = _sock_addr(sock_path)
                try:
                    os.unlink(addr)
                except FileNotFoundError:
                    pass
                return 0  # exits with the lock held: nobody connects to a dying pump


def _trusted(conn: socket.socket) -> bool:
    """Only root or the pump's own user may hand it pipes (it writes files as that user)."""
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid in (0, os.geteuid()):
        return True
    conn.close()
    return False


def _may_exit(lsock: socket.socket, lock_path: Path) -> tuple[bool, socket.socket | None]:
    """(True, None) when no agent is connecting: agents connect (or spawn a pump) holding
    the lock, so holding it with an empty backlog means nobody will come. A connection
    that is already waiting is returned instead."""
    try:
        lf = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return True, None
    try:
        fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lf)
        return False, None
    lsock.setblocking(False)
    try:
        conn, _ = lsock.accept()
    except BlockingIOError:
        return True, None  # the lock stays held until the process is gone
    finally:
        lsock.setblocking(True)
    os.close(lf)
    conn.setblocking(True)
    return False, conn


def _client_message(sel: selectors.BaseSelector, conn: socket.socket) -> int | None:
    """Handle one request; the number of pipes added, None when the agent went away."""
    fds = array.array("i")
    try:
        msg, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except OSError:
        return None
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    try:
        req = json.loads(msg)
        op = req["op"]
    except (ValueError, KeyError, TypeError):
        op = None
    added = 0
    if op == "relay":
        try:
            if len(fds) != 2:
                raise ValueError("a relay takes a listening socket and the daemon's")
            _Relay(sel, socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1]),
                   float(req.get("hold_s", 1.0)))
            reply = {"ok": True, "pid": os.getpid()}
        except (OSError, ValueError, TypeError) as exc:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            reply = {"ok": False, "error": str(exc)}
    elif op == "add":
        try:
            added = _add(sel, Path(req["dir"]), list(req["names"]), list(fds))
            reply = {"ok": True, "pid": os.getpid()}
        except (OSError, ValueError, TypeError) as exc:
            for fd in fds:
                os.close(fd)
            reply = {"ok": False, "error": str(exc)}
    else:
        for fd in fds:
            os.close(fd)
        pipes = sum(1 for k in sel.get_map().values() if k.data[0] == "pipe")
        reply = {"ok": op == "status", "pid": os.getpid(), "pipes": pipes,
                 "caps": list(CAPS), "relays": len(_RELAYS)}
    try:
        conn.send(json.dumps(reply).encode())
    except OSError:
        pass
    return added


def _add(sel: selectors.BaseSelector, log_dir: Path, names: list[str], fds: list[int]) -> int:
    if len(names) != len(fds) or not log_dir.is_absolute():
        raise ValueError("one log name per pipe and an absolute directory")
    for n in names:
        if not _NAME.match(n):
            raise ValueError(f"bad log name {n!r}")
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, fd in zip(names, fds, strict=True):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, ("pipe", _Sink(log_dir / f"{name}.log")))
    return len(fds)


# -- lazy restores: the background push deferred ---------------------------------------
LAZY_PAGES_RESTORE_FINISHED = 0x52535446  # CRIU's "ReSTore Finished" word (criu/uffd.c)
UFFDIO_WAKE = 0x8010AA02  # _IOR(0xAA, 2, struct uffdio_range)
_WAKE_ALL = struct.pack("QQ", 0x10000, (1 << 47) - 0x1000 - 0x10000)
NUDGE_S = 0.002
_RELAYS: list[_Relay] = []


class _Relay:
    """Between ``criu restore --lazy-pages`` and CRIU's lazy-pages daemon: everything is
    passed through, except that the "restore finished" word is held back for ``hold_s``.

    The daemon pushes every page the restore left lazy as soon as it hears that word;
    held back, it serves the first requests' page faults only, and the push (tens to
    hundreds of ms of CPU for large images) comes after them. While holding, a page fault
    whose copy the kernel refused with EAGAIN (it raced an munmap in the app), which the
    daemon leaves for the push to redo, is re-raised every NUDGE_S by waking the
    faulting threads (UFFDIO_WAKE on copies of the tasks' userfaultfds). The relay lives
    in the resident pump, not in the agent: a restarted agent leaves it working.
    """

    def __init__(self, sel: selectors.BaseSelector, listen: socket.socket,
                 daemon: socket.socket, hold_s: float) -> None:
        self.sel, self.listen, self.daemon, self.hold_s = sel, listen, daemon, hold_s
        self.conn: socket.socket | None = None
        self.uffds: list[int] = []
        self.release_at: float | None = None
        for sock in (listen, daemon):
            sock.setblocking(True)
        sel.register(listen, selectors.EVENT_READ, ("relay", self))
        # the daemon never writes: readable means it is gone (its pod stopped, or it was
        # killed), and the relay with it, so that nothing waits for a restore that ended
        sel.register(daemon, selectors.EVENT_READ, ("relay", self))
        _RELAYS.append(self)

    def ready(self, sock) -> None:
        try:
            if sock is self.daemon:
                if not self.daemon.recv(4096):
                    self.close()
                return
            if sock is self.listen:
                self.conn, _ = self.listen.accept()
                self.sel.unregister(self.listen)
                self.listen.close()
                self.sel.register(self.conn, selectors.EVENT_READ, ("relay", self))
            else:
                self._step()
        except OSError:
            self.close()

    def _step(self) -> None:
        assert self.conn is not None
        word = self.conn.recv(4, socket.MSG_WAITALL)
        if len(word) < 4:  # criu restore is done with the socket
            self.sel.unregister(self.conn)
            self.conn.close()
            self.conn = None
            if self.release_at is None:
                self.close()  # no "finished": the restore failed, the daemon may go
            return
        (val,) = struct.unpack("i", word)
        if val == LAZY_PAGES_RESTORE_FINISHED:
            self.release_at = time.monotonic() + self.hold_s
            return
        self.daemon.sendall(word)
        if val <= 0:
            return  # a zombie: no userfaultfd follows
        data, anc, _, _ = self.conn.recvmsg(1, socket.CMSG_SPACE(4))
        fds = [fd for lvl, typ, raw in anc
               if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS
               for fd in struct.unpack(f"{len(raw) // 4}i", raw)]
        try:
            self.daemon.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          struct.pack(f"{len(fds)}i", *fds))])
            self.uffds += fds  # kept for the nudges
        except OSError:
            for fd in fds:
                os.close(fd)
            raise

    def tick(self, now: float) -> None:
        if self.release_at is None:
            return
        if now >= self.release_at:
            try:
                self.daemon.sendall(struct.pack("I", LAZY_PAGES_RESTORE_FINISHED))
            except OSError:
                pass
            self.close()
            return
        for fd in self.uffds:
            try:
                fcntl.ioctl(fd, UFFDIO_WAKE, _WAKE_ALL)
            except OSError:
                pass

    def close(self) -> None:
        for sock in (self.conn, self.listen, self.daemon):
            if sock is not None and sock.fileno() >= 0:
                try:
                    self.sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
        self.conn = None
        self.daemon.close()
        for fd in self.uffds:
            os.close(fd)
        self.uffds = []
        self.release_at = None
        if self in _RELAYS:
            _RELAYS.remove(self)


# -- the agent's side -------------------------------------------------------------------
class PumpError(RuntimeError):
    pass


class PumpClient:
    """This process's connection to the resident pump of one logs directory."""

    def __init__(self, logs_root: Path) -> None:
        self.root = Path(logs_root)
        self.sock: socket.socket | None = None
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._caps: set[str] = set()
        self._caps_of: socket.socket | None = None  # the connection _caps were asked on

    def _connect(self) -> socket.socket:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        lf = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                return self._dial()
            except (FileNotFoundError, ConnectionRefusedError):
                self._spawn()
                return self._dial()
        finally:
            os.close(lf)  # releases the lock

    def _dial(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        addr, dfd = _sock_addr(self.root / SOCK_NAME)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        finally:
            if dfd is not None:
                os.close(dfd)
        return s

    def _spawn(self) -> None:
        r, w = os.pipe()
        try:
            subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), "--serve",
                 str(self.root / SOCK_NAME), str(self.root / LOCK_NAME), str(w)],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
            os.close(w)
            w = -1
            import select
            poller = select.poll()
            poller.register(r, select.POLLIN | select.POLLHUP)
            if not poller.poll(10_000):
                raise PumpError("log pump did not start within 10 s")
            if os.read(r, 1) != b"r":
                raise PumpError("log pump exited before it was ready")
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def _request(self, req: dict, fds: list[int] = ()) -> dict:
        data = json.dumps(req).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = self._connect()
            try:
                self.sock.sendmsg([data], anc)
                reply = self.sock.recv(65536)
                if not reply:
                    raise ConnectionResetError(errno.ECONNRESET, "log pump went away")
                out = json.loads(reply)
                self.pid = out.get("pid", self.pid)
                return out
            except OSError:
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def add(self, log_dir: Path, pipes: dict[str, int]) -> None:
        """Hand the read ends (tier name -> fd) to the pump; the caller closes its copies."""
        with self._lock:
            out = self._request({"op": "add", "dir": str(log_dir), "names": list(pipes)},
                                list(pipes.values()))
        if not out.get("ok"):
            raise PumpError(f"log pump refused the pipes: {out.get('error')}")

    def warm(self) -> None:
        """Connect (spawning the pump if needed) in the background, so that the first pod
        of this process does not wait for a Python start-up."""
        if self.sock is not None or getattr(self, "_warming", False):
            return
        self._warming = True

        def connect() -> None:
            try:
                with self._lock:
                    if self.sock is None:
                        self.sock = self._connect()
            except OSError:
                pass  # the first pod connects (and reports) itself

        threading.Thread(target=connect, name="edgeshot-pump-connect", daemon=True).start()

    def can(self, cap: str) -> bool:
        """Whether the pump this process talks to does ``cap`` (asked once per pump)."""
        try:
            with self._lock:
                if self.sock is None or self._caps_of is not self.sock:
                    out = self._request({"op": "status"})
                    self._caps, self._caps_of = set(out.get("caps", ())), self.sock
                return cap in self._caps
        except OSError:
            return False

    def relay(self, listen: socket.socket, daemon: socket.socket, hold_s: float) -> None:
        """Have the pump relay a lazy restore's socket to its lazy-pages daemon, holding
        the daemon's background push back for ``hold_s`` (see ``_Relay``)."""
        with self._lock:
            out = self._request({"op": "relay", "hold_s": hold_s},
                                [listen.fileno(), daemon.fileno()])
        if not out.get("ok"):
            raise PumpError(f"log pump refused the relay: {out.get('error')}")

    def status(self) -> dict:
        with self._lock:
            return self._request({"op": "status"})

    def close(self, wait_s: float = 2.0) -> None:
        """Disconnect; when no pod writes to the pump any more, wait until it has exited."""
        self._warming = False
        with self._lock:
            if self.sock is None:
                return
            try:
                pipes = self._request({"op": "status"}).get("pipes", 1)
            except OSError:
                pipes = 1
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        if not pipes and self.pid:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


_CLIENTS: dict[str, PumpClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client(logs_root: Path) -> PumpClient:
    """The (shared) pump client for ``logs_root``; connects on first use."""
    key = str(logs_root)
    with _CLIENTS_LOCK:
        c = _CLIENTS.get(key)
        if c is None:
            c = _CLIENTS[key] = PumpClient(Path(logs_root))
        return c


def close_all(wait_s: float = 2.0) -> None:
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for c in clients:
        c.close(wait_s)


# -- one pump per pod (the former scheme; kept for pods of older agents) ------------------
def main(argv: list[str]) -> int:
    if argv and argv[0] == "--serve":
        return serve(Path(argv[1]), Path(argv[2]), int(argv[3]))
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    sel = selectors.DefaultSelector()
    for spec in argv[1:]:
        name, _, fd = spec.partition("=")
        sel.register(int(fd), selectors.EVENT_READ, ("pipe", _Sink(out / f"{name}.log")))
    while sel.get_map():
        for key, _ in sel.select():
            _drain(sel, key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
