"""HAProxy's runtime API over its admin socket: commands, whole-map replacement, server state.

Interactive ("prompt") mode keeps one connection for a batch of commands and
delimits each answer by the prompt, so every command's answer (or error) is
known. Maps are replaced atomically with `prepare map` / `add map @ver` /
`commit map`: a request sees the old table or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path

PROMPT = b"\n> "
_PAYLOAD_CHUNK = 12_000  # bytes per "add map" payload: well below tune.bufsize (16 KiB)


class RuntimeError_(Exception):
    """HAProxy answered a command with an error."""


class Runtime:
    def __init__(self, socket_path: str | Path, timeout: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    async def run(self, *commands: str) -> list[str]:
        """Run commands on one connection; each answer as text (without the prompt)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.socket_path, limit=2**24), self.timeout)
        try:
            writer.write(b"prompt\n")
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"> "), self.timeout)
            answers = []
            for cmd in commands:
                writer.write(cmd.encode() + b"\n")
                await writer.drain()
                raw = await asyncio.wait_for(reader.readuntil(PROMPT), self.timeout)
                answers.append(raw[: -len(PROMPT)].decode(errors="replace").strip("\n"))
            writer.write(b"quit\n")
            await writer.drain()
            return answers
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def check(self, *commands: str) -> list[str]:
        """Like run(), raising when an answer looks like an error."""
        answers = await self.run(*commands)
        for cmd, ans in zip(commands, answers, strict=True):
            low = ans.lower()
            if any(w in low for w in ("unknown", "not found", "error", "invalid", "expects",
                                      "require", "cannot", "failed", "no such")):
                raise RuntimeError_(f"{cmd.split(' <<')[0]!r}: {ans.strip()}")
        return answers

    async def replace_map(self, map_file: str | Path, entries: Mapping[str, str]) -> None:
        """Atomically replace every entry of a map (keys and values without newlines)."""
        name = str(map_file)
        (ans,) = await self.check(f"prepare map {name}")
        version = ans.rsplit(":", 1)[-1].strip()
        if not version.isdigit():
            raise RuntimeError_(f"prepare map {name}: unexpected answer {ans!r}")
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

    async def server_states(self, backend: str) -> dict[str, dict[str, str]]:
        """Per server of a backend: its fields from `show servers state` (srv_op_state 2 = up)."""
        (ans,) = await self.run(f"show servers state {backend}")
        lines = ans.splitlines()
        header = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if header is None:
            return {}
        cols = header[2:].split()
        out = {}
        for ln in lines[lines.index(header) + 1:]:
            if not ln or ln.startswith("#"):
                continue
            row = dict(zip(cols, ln.split(), strict=False))
            if "srv_name" in row:
                out[row["srv_name"]] = row
        return out

    async def stat(self) -> list[dict[str, str]]:
        """`show stat` as rows (proxy, server, counters)."""
        (ans,) = await self.run("show stat")
        lines = ans.splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        cols = lines[0][2:].split(",")
        return [dict(zip(cols, ln.split(","), strict=False)) for ln in lines[1:] if ln]


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
