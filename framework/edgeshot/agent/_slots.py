"""Slots: pre-made network namespaces that pods run in (docs/architecture.md, "Instances are pods").

HAProxy 2.6 refuses the ``namespace`` option on servers added at runtime, so
each pod runs in a *slot*: a named netns (/run/netns/<slot>) with ``lo`` and
one end of a veth pair carrying the slot's own address on a host-only bridge.
Slots are made once and reused; HAProxy and the activator reach a pod at
``<slot address>:$PORT``. A slot is free when no live pod init holds it, so a
crashed agent never leaks slots.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from ._sys import CommandError, pid_alive, run, write_json

NETNS_DIR = Path("/run/netns")
_ENSURED: set[tuple[str, str, int]] = set()  # pools this process has already set up


class Slot(BaseModel, frozen=True):
    """One reusable network namespace with its own address."""

    name: str
    index: int
    address: str
    gateway: str
    prefixlen: int
    host_veth: str

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.name


class SlotPool:
    """The slots of one server: ``size`` netns on ``subnet`` behind bridge ``<prefix>-br``."""

    def __init__(self, state_dir: Path, *, prefix: str = "es", subnet: str = "10.213.0.0/24",
                 size: int = 16) -> None:
        if len(prefix) > 6 or not prefix.replace("-", "").isalnum():
            raise ValueError("slot prefix must be at most 6 alphanumeric characters")
        self.state_dir = Path(state_dir) / "slots"
        self.prefix = prefix
        self.net = ipaddress.IPv4Network(subnet)
        if size > self.net.num_addresses - 3:
            raise ValueError(f"subnet {subnet} is too small for {size} slots")
        self.size = size
        self.bridge = f"{prefix}-br"

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)

    def slot(self, index: int) -> Slot:
        return Slot(name=f"{self.prefix}-slot{index}", index=index,
                    address=str(self.net.network_address + 2 + index), gateway=self.gateway,
                    prefixlen=self.net.prefixlen, host_veth=f"{self.prefix}-v{index}")

    def slots(self) -> list[Slot]:
        return [self.slot(i) for i in range(self.size)]

    # -- set-up and tear-down -------------------------------------------------
    def ensure(self, *, force: bool = False) -> None:
        """Create the bridge and every slot that is missing (idempotent; once per process
        unless ``force``: a restore must not pay for a dozen ``ip`` commands)."""
        key = (self.prefix, str(self.net), self.size)
        if key in _ENSURED and not force and NETNS_DIR.joinpath(self.slot(0).name).exists():
            return
        if run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
        addr = f"{self.gateway}/{self.net.prefixlen}"
        if addr not in run(["ip", "-o", "addr", "show", "dev", self.bridge]).stdout:
            run(["ip", "addr", "add", addr, "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for s in self.slots():
            self._ensure_slot(s)
        _ENSURED.add(key)

    def _ensure_slot(self, s: Slot) -> None:
        if s.netns_path.exists() and run(["ip", "-n", s.name, "link", "show", "eth0"],
                                         check=False).returncode == 0:
            return
        self._remove_slot(s)
        run(["ip", "netns", "add", s.name])
        run(["ip", "link", "add", s.host_veth, "type", "veth", "peer", "name", "eth0",
             "netns", s.name])
        run(["ip", "link", "set", s.host_veth, "master", self.bridge, "up"])
        run(["ip", "-n", s.name, "addr", "add", f"{s.address}/{s.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", s.name, "link", "set", "lo", "up"])
        run(["ip", "-n", s.name, "link", "set", "eth0", "up"])
        run(["ip", "-n", s.name, "route", "add", "default", "via", s.gateway])

    def _remove_slot(self, s: Slot) -> None:
        run(["ip", "link", "del", s.host_veth], check=False)
        if s.netns_path.exists():
            run(["ip", "netns", "del", s.name], check=False)
        (self.state_dir / f"{s.name}.json").unlink(missing_ok=True)

    def destroy(self) -> None:
        """Remove every slot, the bridge and the pool's state (pods must be stopped)."""
        for s in self.slots():
            self._remove_slot(s)
        run(["ip", "link", "del", self.bridge], check=False)
        _ENSURED.discard((self.prefix, str(self.net), self.size))

    # -- allocation -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _holder(self, s: Slot) -> dict | None:
        try:
            rec = json.loads((self.state_dir / f"{s.name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        alive = [p for p in (rec.get("pid"), rec.get("reserved_by")) if p and pid_alive(p)]
        return rec if alive else None

    def acquire(self, pod_id: str) -> Slot:
        """Reserve a free slot for ``pod_id`` (by this process until ``bind``)."""
        with self._locked():
            for s in self.slots():
                if self._holder(s) is None:
                    if not s.netns_path.exists():
                        self._ensure_slot(s)
                    write_json(self.state_dir / f"{s.name}.json",
                               {"pod": pod_id, "pid": None, "reserved_by": os.getpid()},
                               durable=False)
                    return s
        raise NoFreeSlot(f"all {self.size} slots of pool {self.prefix!r} are in use")

    def bind(self, slot: Slot, pod_id: str, pid: int) -> None:
        """Record the pod init that now holds ``slot`` (the slot is free when it dies)."""
        with self._locked():
            write_json(self.state_dir / f"{slot.name}.json", {"pod": pod_id, "pid": pid,
                                                             "reserved_by": None},
                       durable=False)

    def release(self, slot: Slot) -> None:
        with self._locked():
            (self.state_dir / f"{slot.name}.json").unlink(missing_ok=True)

    def in_use(self) -> dict[str, str]:
        """Slot name -> pod id of every held slot."""
        return {s.name: h["pod"] for s in self.slots() if (h := self._holder(s))}

    def free_count(self) -> int:
        return self.size - len(self.in_use())


class NoFreeSlot(RuntimeError):
    pass


__all__ = ["Slot", "SlotPool", "NoFreeSlot", "CommandError"]
