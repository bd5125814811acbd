"""Kits: what the next pod start or restore needs, made ahead of time, off the hot path.

Moving a process into a cgroup costs it an RCU grace period (the cgroup core takes
``cgroup_threadgroup_rwsem`` for writing; only a hierarchy mounted with
``favordynmods`` avoids it): 5-15 ms here, more under load, on every start and
restore, and a preexec_fn to do it makes Python fork the whole agent as well.

A kit is a fresh cgroup with a parked ``bash`` already inside it, holding the
write ends of ``MAX_PIPES`` fresh pipes (tier logs) and a pipe for its stderr.
A start or restore *claims* a kit: renames its cgroup to the pod's id (cgroup
v1; v2 cannot rename a cgroup, so there the pod keeps the kit's cgroup name,
which ``Instance.cgroup`` records), writes the pod's limits, and sends the
parked ``bash`` one command line to ``exec`` (``criu restore …`` or the
cold-start launcher). Nothing is spawned and nothing migrates on the way; a
background thread makes a new kit for each one taken.

A parked ``bash`` whose agent goes away (its stdin closes) leaves its cgroup and
removes it; cgroups of kits whose agent and ``bash`` were both killed are swept
when the next pool starts.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import threading
from collections import deque
from pathlib import Path

from ._cgroups import ROOT, PodCgroup, mode
from ._sys import log, pid_alive, wait_readable

MAX_PIPES = 6  # PodSpec allows at most six tiers
PREFIX = "kit-"
_COUNTER = itertools.count()


class KitError(RuntimeError):
    pass


class Kit:
    """A parked launcher in a fresh cgroup, with pipes for up to MAX_PIPES tiers."""

    def __init__(self) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{next(_COUNTER)}"
        self.cgroup = PodCgroup(self.name)
        self.cgroup.create(cpu=None, memory_mb=None)
        self.reads: list[int] = []
        self.writes: list[int] = []  # fd numbers in the parked bash
        self.pipes: list[str] = []  # "pipe:[inode]" of each write end
        self.proc: subprocess.Popen[bytes] | None = None
        self.err_r = -1
        agent_fds: list[int] = []
        ready_r = -1
        try:
            for _ in range(MAX_PIPES):
                r, w = os.pipe()
                self.reads.append(r)
                agent_fds.append(w)
                self.writes.append(w)
                self.pipes.append(os.readlink(f"/proc/self/fd/{w}"))
            self.err_r, err_w = os.pipe()
            agent_fds.append(err_w)
            ready_r, ready_w = os.pipe()
            agent_fds.append(ready_w)
            joins = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} || exit 126; "
                            for d in self.cgroup.dirs)
            leave = "".join(f"echo $$ > {shlex.quote(str(_root_of(d) / 'cgroup.procs'))}; "
                            for d in self.cgroup.dirs)
            rmdirs = " ".join(shlex.quote(str(d)) for d in self.cgroup.dirs)
            script = (f"{joins}exec 2>&{err_w} {err_w}>&-; echo r >&{ready_w}; exec {ready_w}>&-; "
                      # the command ends with a NUL (it may span lines): EOF first means
                      # the agent is gone or gave the kit up
                      "if IFS= read -r -d '' line; then exec 0</dev/null; eval \"$line\"; "
                      "exit 127; fi; "
                      f"{leave}rmdir {rmdirs} 2>/dev/null; exit 0")
            env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                   "LANG": os.environ.get("LANG", "C.UTF-8")}
            self.proc = subprocess.Popen(["/bin/bash", "-c", script], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         pass_fds=tuple(agent_fds), env=env, cwd="/",
                                         start_new_session=True)
            for fd in agent_fds:
                os.close(fd)
            agent_fds = []
            if not wait_readable(ready_r, 30) or os.read(ready_r, 2) != b"r\n":
                raise KitError(f"kit launcher did not park (exit {self.proc.poll()})")
        except BaseException:
            for fd in agent_fds:
                os.close(fd)
            self.discard()
            raise
        finally:
            if ready_r >= 0:
                os.close(ready_r)

    def adopt(self, pod_id: str, *, cpu, memory_mb: int | None) -> PodCgroup:
        """The kit's cgroup, renamed to ``pod_id`` where the hierarchy allows (v1), with
        the pod's limits."""
        cg = self.cgroup
        if cg.mode == "v1":
            new = PodCgroup(pod_id)
            done = []
            try:
                for old, d in zip(cg.dirs, new.dirs, strict=True):
                    os.rename(old, d)
                    done.append((old, d))
            except OSError:
                for old, d in done:
                    os.rename(d, old)
                raise
            cg = self.cgroup = new
        cg.create(cpu=cpu, memory_mb=memory_mb)  # the directories exist: limits only
        return cg

    def launch(self, line: str, *, nice: int | None = None) -> subprocess.Popen[bytes]:
        """Make the parked bash run ``line`` (which should ``exec``); the kit is spent.
        ``nice``: the CPU priority it runs at (what it execs keeps it)."""
        assert self.proc is not None and self.proc.stdin is not None
        if nice is not None:
            set_nice(self.proc.pid, nice)
        try:
            if "\0" in line:
                raise KitError("a kit command cannot contain NUL")
            self.proc.stdin.write(line.encode() + b"\0")
            self.proc.stdin.close()
        except OSError as exc:
            raise KitError(f"kit launcher is gone ({self.proc.poll()}): {exc}") from None
        for r in self.reads:
            if r >= 0:
                os.close(r)
        self.reads = []
        return self.proc

    def take_reads(self, n: int) -> list[int]:
        """The read ends of the first ``n`` pipes (the caller owns them now); the other
        pipes are closed on this side."""
        out, rest = self.reads[:n], self.reads[n:]
        for r in rest:
            os.close(r)
        self.reads = []
        return out

    def stderr(self) -> str:
        """What the launched command wrote to stderr (after it exited)."""
        if self.err_r < 0:
            return ""
        os.set_blocking(self.err_r, False)
        try:
            return os.read(self.err_r, 65536).decode(errors="replace")
        except OSError:
            return ""
        finally:
            os.close(self.err_r)
            self.err_r = -1

    def discard(self) -> None:
        """Give the kit up: the parked bash leaves and removes the cgroup, then exits."""
        for r in self.reads:
            os.close(r)
        self.reads = []
        if self.err_r >= 0:
            os.close(self.err_r)
            self.err_r = -1
        if self.proc is not None:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.cgroup.remove()


def set_nice(pid: int, nice: int) -> None:
    """Best effort: a lower nice value needs CAP_SYS_NICE."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        pass


def _root_of(d: Path) -> Path:
    """The hierarchy root of a cgroup directory under ROOT (v2: ROOT; v1: ROOT/<ctl>)."""
    rel = d.relative_to(ROOT)
    return ROOT if mode() == "v2" else ROOT / rel.parts[0]


class KitPool:
    """Kits kept ready by a background thread (one pool per agent process)."""

    def __init__(self) -> None:
        self._kits: deque[Kit] = deque()
        self._cv = threading.Condition()
        self._want = 0
        self._making = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failures = 0

    def ensure(self, n: int) -> None:
        """Keep ``n`` kits ready (the largest n asked for wins)."""
        with self._cv:
            if n <= self._want and self._thread is not None:
                return
            self._want = max(self._want, n)
            self._closed = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="edgeshot-kits",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def take(self) -> Kit | None:
        """A ready kit, or None (the caller does without: cgroup join on the hot path)."""
        with self._cv:
            while self._kits:
                kit = self._kits.popleft()
                self._cv.notify_all()
                if kit.proc is not None and kit.proc.poll() is None:
                    return kit
                self._discard_later(kit)
            self._cv.notify_all()
            return None

    def ready(self) -> int:
        with self._cv:
            return len(self._kits)

    def wait_ready(self, n: int, timeout: float = 10.0) -> bool:
        """Block until ``n`` kits are ready (benchmarks and tests start from steady state)."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self._kits) >= min(n, self._want) or
                                     self.failures > 3, timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._want = 0
            kits = list(self._kits)
            self._kits.clear()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(30)
        for kit in kits:
            kit.discard()
        with self._cv:
            self._thread = None

    def _discard_later(self, kit: Kit) -> None:
        threading.Thread(target=kit.discard, daemon=True).start()

    def _run(self) -> None:
        sweep()
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or
                                  len(self._kits) + self._making < self._want)
                if self._closed:
                    return
                if self.failures > 3:
                    self._cv.wait(5)
                    self.failures = 0
                    continue
                self._making += 1
            try:
                kit = Kit()
            except Exception as exc:
                log.warning("could not make a kit (restores will join cgroups on the hot "
                            "path): %s", exc)
                kit = None
            with self._cv:
                self._making -= 1
                if kit is None:
                    self.failures += 1
                elif self._closed:
                    self._discard_later(kit)
                else:
                    self._kits.append(kit)
                self._cv.notify_all()


def sweep() -> None:
    """Remove kit cgroups whose agent is gone and that hold no process."""
    for base in {PodCgroup("x").dirs[i].parent for i in range(len(PodCgroup("x").dirs))}:
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if not d.name.startswith(PREFIX) or not d.is_dir():
                continue
            try:
                owner = int(d.name[len(PREFIX):].split("-")[0])
            except ValueError:
                continue
            if owner == os.getpid() or pid_alive(owner):
                continue
            try:
                if not (d / "cgroup.procs").read_text().strip():
                    d.rmdir()
            except OSError:
                pass


_POOL = KitPool()


def pool() -> KitPool:
    return _POOL


def available() -> bool:
    """Kits need a cgroup hierarchy with cpu and memory (and bash)."""
    return mode() != "none" and os.path.exists("/bin/bash")
