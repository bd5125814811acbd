"""Talking to a running HAProxy: its runtime API, its answers, its binary and files.

Both dispatchers are HAProxy processes that Python drives live (docs/architecture.md, "The path
of a request"): each edgepoint's local dispatcher (``edge/_haproxy.py``) and the
controller's global dispatcher (``control/_dispatcher.py``). What both need is here,
once:

* ``Runtime``: the runtime API on an admin socket or the master socket. Interactive
  ("prompt") mode keeps one connection for a batch of commands and delimits each
  answer by the prompt, so every command's answer (or error) is known. Servers are
  added, weighted, drained and deleted without reloads; maps are replaced atomically
  with ``prepare map`` / ``add map @ver`` / ``commit map`` (a request sees the old
  table or the new one, never a mix).
* ``parse_stat``, ``parse_info``: ``show stat`` and ``show info`` as data.
* ``find_haproxy``, ``check_config``: the binary, and ``haproxy -c`` on a file.
* ``write_atomic``, ``write_if_changed``, ``map_text``, ``read_map``: configuration and
  map files, so that a reload or a restart starts from what was last pushed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["HAProxyError", "Runtime", "parse_stat", "parse_info", "find_haproxy",
           "check_config", "write_atomic", "write_if_changed", "map_text", "read_map"]


class HAProxyError(Exception):
    """HAProxy refused a configuration or a runtime command (message: what and why)."""


class ServerLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...  # "ip:port"
    @property
    def weight(self) -> int: ...


# words of an answer that is an error (a command that worked answers nothing, or says so)
_ERRORS = ("unknown", "not found", "error", "invalid", "expects", "require", "cannot",
           "failed", "no such", "refused", "not allowed", "does not", "must be", "is not")
_PAYLOAD_CHUNK = 12_000  # bytes per "add map" payload: well below tune.bufsize (16 KiB)


class Runtime:
    """HAProxy's runtime API on a stats socket (admin level) or the master socket."""

    server_options = ""  # what add_server gives a server unless told otherwise

    def __init__(self, socket_path: str | Path, timeout: float = 5.0, *,
                 master: bool = False) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self.prompt = b"master> " if master else b"> "

    async def run(self, *commands: str) -> list[str]:
        """Commands on one connection (prompt mode); each answer as text."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.socket_path, limit=1 << 24), self.timeout)
        try:
            writer.write(b"prompt\n")
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(self.prompt), self.timeout)
            end = b"\n" + self.prompt
            answers = []
            for cmd in commands:
                writer.write(cmd.encode() + b"\n")
                await writer.drain()
                raw = await asyncio.wait_for(reader.readuntil(end), self.timeout)
                answers.append(raw[: -len(end)].decode(errors="replace").strip("\n"))
            writer.write(b"quit\n")
            await writer.drain()
            return answers
        finally:
            await _close(writer)

    async def oneshot(self, command: str) -> None:
        """One command without prompt mode, its answer read until HAProxy hangs up (or the
        timeout): e.g. the master's ``reload``, after which the master re-executes."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.socket_path), self.timeout)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(), self.timeout)
            except (TimeoutError, ConnectionError):
                pass
        finally:
            await _close(writer)

    async def check(self, *commands: str, ok: Iterable[str] = ()) -> list[str]:
        """Like ``run``, raising HAProxyError when an answer is an error (``ok``: answers
        containing one of these are fine, e.g. "New server registered.")."""
        answers = await self.run(*commands)
        allow = tuple(ok)
        for cmd, ans in zip(commands, answers, strict=True):
            low = ans.lower()
            if any(a.lower() in low for a in allow):
                continue
            if any(w in low for w in _ERRORS):
                raise HAProxyError(f"{cmd.split(' <<')[0]!r}: {ans.strip()}")
        return answers

    # -- servers -------------------------------------------------------------------------
    async def add_server(self, backend: str, s: ServerLike, *, options: str | None = None,
                         affinity: bool = False, health: bool = True) -> None:
        """Add a server (``options``: by default ``server_options``), enable its health
        check and traffic; re-enable the dynamic cookies of the backend so that the new
        server gets one."""
        opts = self.server_options if options is None else options
        cmds = [f"add server {backend}/{s.name} {s.address} weight {s.weight} {opts}"]
        if health and "check" in opts.split():
            cmds.append(f"enable health {backend}/{s.name}")
        cmds.append(f"set server {backend}/{s.name} state ready")
        if affinity:
            cmds.append(f"enable dynamic-cookie backend {backend}")
        await self.check(*cmds, ok=("New server registered",))

    async def drain(self, backend: str, server: str, *, keep_pinned: bool = False) -> None:
        """No new requests; those in flight finish. HAProxy's own ``drain`` state still
        sends users pinned by affinity there (``keep_pinned``); by default the server goes
        to maintenance instead, so that pinned users move on too (their cookie names a
        server that is not up: HAProxy redispatches them)."""
        state = "drain" if keep_pinned else "maint"
        await self.check(f"set server {backend}/{server} state {state}")

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        await self.check(f"set weight {backend}/{server} {int(weight)}")

    async def set_server_state(self, backend: str, server: str, state: str) -> None:
        await self.check(f"set server {backend}/{server} state {state}")

    async def remove_server(self, backend: str, server: str) -> None:
        """Maintenance, then delete (HAProxy refuses while connections remain: the caller
        drains first)."""
        answers = await self.run(f"disable health {backend}/{server}",
                                 f"set server {backend}/{server} state maint",
                                 f"shutdown sessions server {backend}/{server}",
                                 f"del server {backend}/{server}")
        last = answers[-1].lower()
        if "deleted" not in last and "no such server" not in last \
                and "unknown server" not in last:
            raise HAProxyError(f"del server {backend}/{server}: {answers[-1].strip()}")

    # -- maps ------------------------------------------------------------------------------
    async def replace_map(self, map_file: str | Path, entries: Mapping[str, str]) -> None:
        """Atomically replace every entry of a map (keys and values without newlines)."""
        name = str(map_file)
        (ans,) = await self.check(f"prepare map {name}")
        version = ans.rsplit(":", 1)[-1].strip()
        if not version.isdigit():
            raise HAProxyError(f"prepare map {name}: unexpected answer {ans!r}")
        commands = [f"add map @{version} {name} <<\n{chunk}\n"
                    for chunk in _chunks(f"{k} {v}" for k, v in entries.items())]
        commands.append(f"commit map @{version} {name}")
        await self.check(*commands)

    async def show_map(self, map_file: str | Path) -> dict[str, str]:
        (ans,) = await self.run(f"show map {map_file}")
        out = {}
        for line in ans.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0].startswith("0x"):
                out[parts[1]] = parts[2]
        return out

    # -- reading ---------------------------------------------------------------------------
    async def show_stat(self) -> list[dict[str, str]]:
        """``show stat`` as rows (proxy, server, counters)."""
        (raw,) = await self.run("show stat")
        return parse_stat(raw)

    async def show_info(self) -> dict[str, str]:
        (raw,) = await self.run("show info")
        return parse_info(raw)

    async def servers_state(self, backend: str | None = None) -> list[dict[str, str]]:
        """``show servers state`` (of one backend, or all) as rows: be_name, srv_name,
        srv_op_state (2 = up), ..."""
        (raw,) = await self.run(f"show servers state {backend}" if backend
                                else "show servers state")
        lines = [ln for ln in raw.splitlines() if ln.strip()]
        head = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if head is None:
            return []
        cols = head[2:].split()
        return [dict(zip(cols, ln.split(), strict=False)) for ln in lines
                if ln[0].isdigit() and len(ln.split()) >= len(cols) - 2]


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def _chunks(lines: Iterable[str]) -> Iterable[str]:
    buf: list[str] = []
    size = 0
    for line in lines:
        if "\n" in line:
            raise ValueError(f"map entry with a newline: {line!r}")
        if buf and size + len(line) + 1 > _PAYLOAD_CHUNK:
            yield "\n".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line) + 1
    if buf:
        yield "\n".join(buf)


def parse_stat(raw: str) -> list[dict[str, str]]:
    text = raw.lstrip()
    if text.startswith("# "):
        text = text[2:]
    return list(csv.DictReader(io.StringIO(text)))


def parse_info(raw: str) -> dict[str, str]:
    out = {}
    for ln in raw.splitlines():
        k, sep, v = ln.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


# -- the binary and its files -------------------------------------------------------------
def find_haproxy(explicit: str | Path | None = None) -> str | None:
    """The haproxy executable: ``explicit`` (a path, or a command name looked up in PATH
    and the usual sbin directories, by default "haproxy"); None when there is none."""
    name = str(explicit or "haproxy")
    if os.sep in name:
        return name if Path(name).exists() else None
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if Path(p).exists()),
        None)


def check_config(binary: str, path: str | Path) -> None:
    """``haproxy -c``: raises HAProxyError with HAProxy's alerts and warnings when it
    refuses the file."""
    r = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        why = [ln for ln in lines if "ALERT" in ln or "WARNING" in ln] or lines
        raise HAProxyError(f"HAProxy refuses {path}:\n" + "\n".join(why)[-3000:])


def write_atomic(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (a reader sees the old text or
    the new one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def write_if_changed(path: Path, text: str) -> bool:
    """``write_atomic`` unless the file already holds ``text``; True when it wrote."""
    if path.exists() and path.read_text() == text:
        return False
    write_atomic(path, text)
    return True


def map_text(entries: Mapping[str, str]) -> str:
    """A map file's text: one "key value" line per entry."""
    return "".join(f"{k} {v}\n" for k, v in entries.items())


def read_map(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k:
                out[k] = v
    return out
