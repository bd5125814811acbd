"""Per-pod cgroups for CPU and memory limits, on cgroup v2 or v1.

This machine is hybrid (cpu and memory are v1 controllers, v2 only has
hugetlb); production hosts are pure v2. The pod's processes join the cgroup
before they exec (start) or before CRIU forks them (restore, with
``--manage-cgroups=ignore`` so restored tasks stay where CRIU runs), so memory
is charged to the pod from its first page.
"""

from __future__ import annotations

import os
import shlex
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def mode() -> str:
    """'v2' when cpu and memory are v2 controllers, 'v1' when they are v1, else 'none'."""
    ctl = ROOT / "cgroup.controllers"
    if ctl.exists() and {"cpu", "memory"} <= set(ctl.read_text().split()):
        return "v2"
    if (ROOT / "memory" / "memory.limit_in_bytes").exists() and (ROOT / "cpu").is_dir():
        return "v1"
    return "none"


class PodCgroup:
    """The cgroup(s) of one pod, under ``<root>/edgeshot/<name>``."""

    def __init__(self, name: str, parent: str = "edgeshot") -> None:
        self.name = name
        self.mode = mode()
        rel = Path(parent) / name
        if self.mode == "v2":
            self.dirs = [ROOT / rel]
        elif self.mode == "v1":
            acct = [ROOT / "cpuacct" / rel] if (ROOT / "cpuacct").is_dir() and not (
                ROOT / "cpu").samefile(ROOT / "cpuacct") else []
            self.dirs = [ROOT / "cpu" / rel, *acct, ROOT / "memory" / rel]
        else:
            self.dirs = []
        self.parent = parent

    @property
    def _mem(self) -> Path | None:
        return self.dirs[-1] if self.dirs else None

    def create(self, *, cpu: Decimal | float | None, memory_mb: int | None) -> None:
        """Create the cgroup and apply limits (no limit where None)."""
        if self.mode == "v2":
            self._enable_v2_controllers()
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        if self.mode == "v2":
            d = self.dirs[0]
            if cpu:
                (d / "cpu.max").write_text(f"{int(Decimal(str(cpu)) * PERIOD_US)} {PERIOD_US}")
            if memory_mb:
                (d / "memory.max").write_text(str(memory_mb * 1024 * 1024))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
        elif self.mode == "v1":
            cpu_dir, mem_dir = self.dirs[0], self.dirs[-1]
            if cpu:
                (cpu_dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (cpu_dir / "cpu.cfs_quota_us").write_text(str(int(Decimal(str(cpu)) * PERIOD_US)))
            if memory_mb:
                (mem_dir / "memory.limit_in_bytes").write_text(str(memory_mb * 1024 * 1024))
                sw = mem_dir / "memory.memsw.limit_in_bytes"
                if sw.exists():
                    sw.write_text(str(memory_mb * 1024 * 1024))

    def _enable_v2_controllers(self) -> None:
        parent = ROOT / self.parent
        parent.mkdir(exist_ok=True)
        for d in (ROOT, parent):
            ctl = d / "cgroup.subtree_control"
            if not {"cpu", "memory"} <= set(ctl.read_text().split()):
                ctl.write_text("+cpu +memory")

    def join_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run by a tiny ``sh`` that first moves itself into the cgroup.

        Instead of a ``preexec_fn``, which makes Python fork the whole agent (page tables
        and all: 1-80 ms here, the more the busier the machine) rather than vfork."""
        if not self.dirs:
            return argv
        joins = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} || exit 126; "
                        for d in self.dirs)
        return ["/bin/sh", "-c", joins + 'exec "$@"', "sh", *argv]

    def join(self, pid: int | None = None) -> None:
        """Move ``pid`` (default: the caller) into the cgroup. Safe in preexec_fn."""
        me = str(pid or os.getpid())
        for d in self.dirs:
            with open(d / "cgroup.procs", "w") as f:
                f.write(me)

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except FileNotFoundError:
                pass
        return sorted(out)

    def memory_bytes(self) -> int | None:
        if not self._mem:
            return None
        f = self._mem / ("memory.current" if self.mode == "v2" else "memory.usage_in_bytes")
        try:
            return int(f.read_text())
        except FileNotFoundError:
            return None

    def oom_kills(self) -> int:
        """How many processes the memory limit killed (v2 memory.events, v1 memory.oom_control)."""
        if not self._mem:
            return 0
        f = self._mem / ("memory.events" if self.mode == "v2" else "memory.oom_control")
        try:
            for line in f.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except FileNotFoundError:
            pass
        return 0

    def cpu_seconds(self) -> float | None:
        if self.mode == "v2":
            try:
                for line in (self.dirs[0] / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec"):
                        return int(line.split()[1]) / 1e6
            except FileNotFoundError:
                return None
        elif self.mode == "v1":
            f = ROOT / "cpuacct" / self.parent / self.name / "cpuacct.usage"
            if f.exists():
                return int(f.read_text()) / 1e9
        return None

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left inside and remove the cgroup directories."""
        deadline = time.monotonic() + timeout
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for d in self.dirs:
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
