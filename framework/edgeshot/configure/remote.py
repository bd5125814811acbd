"""Remote control of a network's servers over SSH, with Fabric.

    fleet = Fleet(Inventory.parse("inventory.json"), key_filename="~/.ssh/edgeshot")
    fleet.run("systemctl is-active edgeshot-agent", "north")   # {server: CommandResult}
    fleet.logs("north-1", lines=50)
    fleet.follow_logs("north", print_line, duration=30)
    fleet.push_appshot("hello-1.tar.gz", "hello-1", "south")  # SFTP, then verified install

A target names a server, an edgepoint, ``controller``, or everything (None/"all");
commas join several. Commands run on many servers at once (ThreadingGroup) or
one after another (SerialGroup); every server gets its own result and one
unreachable server never hides the others' results.

Host keys: new servers' keys are accepted and remembered in ``known_hosts``
(by default ~/.config/edgeshot/known_hosts, shared with `configure`); a key that
changed is refused. ``strict_host_keys=False`` is for throwaway servers only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._inventory import Inventory, InventoryHost

UNITS = {
    "agent": "edgeshot-agent.service",
    "edge": "edgeshot-edge.service",
    "controller": "edgeshot-controller.service",
    "routes": "edgeshot-slot-routes.service",
}
DEFAULT_KNOWN_HOSTS = Path.home() / ".config" / "edgeshot" / "known_hosts"
DEFAULT_STATE_DIR = "/var/lib/edgeshot"
DEFAULT_PYTHON = "/opt/edgeshot/venv/bin/python"


class CommandResult(BaseModel):
    """What one server answered (or why it could not)."""

    model_config = ConfigDict(frozen=True)
    host: str
    ok: bool
    exited: int | None = None  # None: never ran (unreachable, timed out)
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # connection or transfer problem


class Fleet:
    def __init__(self, inventory: Inventory | str | os.PathLike[str], *,
                 key_filename: str | os.PathLike[str] | None = None, user: str | None = None,
                 known_hosts: str | os.PathLike[str] | None = None,
                 strict_host_keys: bool = True, connect_timeout: float = 10) -> None:
        self.inventory = inventory if isinstance(inventory, Inventory) else Inventory.parse(
            inventory)
        self.key_filename = str(Path(key_filename).expanduser()) if key_filename else None
        self.user = user
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else DEFAULT_KNOWN_HOSTS
        self.strict_host_keys = strict_host_keys
        self.connect_timeout = connect_timeout

    # ------------------------------------------------------------------ connections

    def hosts(self, target: str | None = None) -> list[InventoryHost]:
        return self.inventory.select(target)

    def connection(self, host: InventoryHost | str):
        from fabric import Connection

        h = host if isinstance(host, InventoryHost) else self.inventory.host(host)
        if not h.address:
            raise ConnectionError(f"{h.name} has no address in the inventory")
        kwargs: dict[str, Any] = {"banner_timeout": 30,
                                  "auth_timeout": 30}
        if self.key_filename:
            kwargs |= {"key_filename": self.key_filename, "look_for_keys": False,
                       "allow_agent": False}
        conn = Connection(h.address, user=self.user or h.ssh_user, port=h.ssh_port,
                          connect_timeout=self.connect_timeout, connect_kwargs=kwargs)
        conn.edgeshot_name = h.name  # type: ignore[attr-defined]
        client = conn.client
        if self.strict_host_keys:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            self.known_hosts.touch(mode=0o600, exist_ok=True)
            # Fabric's AutoAddPolicy then saves new keys here; a changed key fails.
            client.load_host_keys(str(self.known_hosts))
        else:
            import paramiko
            with contextlib.suppress(AttributeError):
                client._system_host_keys.clear()  # no stale key may refuse a throwaway host
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        return conn

    def group(self, target: str | None = None, *, parallel: bool = True):
        """A Fabric ThreadingGroup (or SerialGroup) of the target's servers."""
        from fabric import SerialGroup, ThreadingGroup

        cls = ThreadingGroup if parallel else SerialGroup
        return cls.from_connections([self.connection(h) for h in self.hosts(target)
                                     if h.address])

    # ------------------------------------------------------------------ commands

    def run(self, command: str, target: str | None = None, *, parallel: bool = True,
            timeout: float | None = None, sudo: bool = False) -> dict[str, CommandResult]:
        """Run ``command`` on every server of the target; one result per server."""
        hosts = self.hosts(target)
        results = {h.name: CommandResult(host=h.name, ok=False,
                                         error="no address in the inventory")
                   for h in hosts if not h.address}
        if len(results) == len(hosts):
            return results
        group = self.group(target, parallel=parallel)
        try:
            results |= self._collect(group, "sudo" if sudo else "run", command, hide=True,
                                     warn=True, timeout=timeout, in_stream=False)
        finally:
            group.close()
        return {h.name: results[h.name] for h in hosts}

    def _collect(self, group, method: str, *args: Any, **kwargs: Any
                 ) -> dict[str, CommandResult]:
        from fabric.exceptions import GroupException

        try:
            raw = getattr(group, method)(*args, **kwargs)
        except GroupException as exc:
            raw = exc.result
        return {c.edgeshot_name: _result(c.edgeshot_name, r) for c, r in raw.items()}

    def logs(self, target: str | None = None, *, units: Iterable[str] = (), lines: int = 100,
             since: str | None = None) -> dict[str, CommandResult]:
        """The last ``lines`` of edgeshot's services' journal on every server of the target."""
        return self.run(_journal_cmd(units, lines, since, follow=False), target)

    def follow_logs(self, target: str | None, write: Callable[[str, str], None], *,
                    units: Iterable[str] = (), lines: int = 10, since: str | None = None,
                    duration: float | None = None) -> dict[str, CommandResult]:
        """Stream new journal lines from every server of the target to ``write(server,
        line)`` until ``duration`` seconds have passed (None: until interrupted)."""
        cmd = _journal_cmd(units, lines, since, follow=True)
        if duration is not None:
            cmd = f"timeout --foreground {max(1, int(duration))} {cmd}; true"
        results: dict[str, CommandResult] = {}
        threads = []
        conns = []
        for h in self.hosts(target):
            if not h.address:
                results[h.name] = CommandResult(host=h.name, ok=False,
                                                error="no address in the inventory")
                continue
            conn = self.connection(h)
            conns.append(conn)
            out = _LineWriter(h.name, write)

            def follow(c=conn, o=out, name=h.name) -> None:
                try:
                    r = c.run(cmd, out_stream=o, err_stream=o, pty=True, warn=True,
                              in_stream=False)
                    results[name] = CommandResult(host=name, ok=True, exited=r.exited)
                except Exception as exc:  # noqa: BLE001 - reported per host
                    results[name] = CommandResult(host=name, ok=False, error=_why(exc))
                finally:
                    o.flush()
            t = threading.Thread(target=follow, daemon=True, name=f"logs-{h.name}")
            t.start()
            threads.append(t)
        try:
            for t in threads:
                t.join()
        finally:
            for c in conns:
                with contextlib.suppress(Exception):
                    c.close()
        return results

    def push_appshot(self, tarball: str | os.PathLike[str], name: str,
                     target: str | None = None, *, state_dir: str = DEFAULT_STATE_DIR,
                     python: str = DEFAULT_PYTHON, parallel: bool = True
                     ) -> dict[str, CommandResult]:
        """Copy a packed appshot over SFTP to every agent of the target and install it
        there, verified (signature and every checksum, against the server's trusted keys),
        for when the controller cannot reach an agent's API. ``stdout`` holds the
        installer's JSON summary."""
        tarball = Path(tarball)
        if not tarball.is_file():
            raise FileNotFoundError(tarball)
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid appshot name {name!r}")
        suffix = ".tar.zst" if tarball.name.endswith(".zst") else ".tar.gz"
        incoming = f"{state_dir}/incoming"
        final = f"{incoming}/{name}{suffix}"
        partial = f"{incoming}/.{name}.partial-{secrets.token_hex(4)}"
        hosts = [h for h in self.hosts(target) if h.is_agent]
        if not hosts:
            raise ValueError(f"no agent among the servers of {target!r}")
        targets = ",".join(h.name for h in hosts)
        results = self.run(f"mkdir -p -m 0700 {shlex.quote(incoming)}", targets,
                           parallel=parallel)
        ready = [n for n, r in results.items() if r.ok]
        if ready:
            group = self.group(",".join(ready), parallel=parallel)
            try:
                sent = self._collect(group, "put", str(tarball), remote=partial)
            finally:
                group.close()
            results |= {n: r for n, r in sent.items() if not r.ok}
            ok = [n for n in ready if sent.get(n) and sent[n].ok]
            if ok:
                install = (f"mv -f {shlex.quote(partial)} {shlex.quote(final)} && "
                           f"{shlex.quote(python)} -m edgeshot.configure.appshot_install "
                           f"{shlex.quote(final)} {shlex.quote(name)} "
                           f"--state-dir {shlex.quote(state_dir)}")
                results |= self.run(install, ",".join(ok), parallel=parallel)
        return {h.name: results[h.name] for h in hosts}

    def ssh_argv(self, server: str, command: Iterable[str] = ()) -> list[str]:
        """An ``ssh`` command line for an interactive session (what `edgeshot ssh` runs
        when there is no terminal to hand to Fabric)."""
        h = self.inventory.host(server)
        if not h.address:
            raise ConnectionError(f"{server} has no address in the inventory")
        argv = ["ssh", "-p", str(h.ssh_port)]
        if self.key_filename:
            argv += ["-i", self.key_filename, "-o", "IdentitiesOnly=yes"]
        if self.strict_host_keys:
            argv += ["-o", "StrictHostKeyChecking=accept-new",
                     "-o", f"UserKnownHostsFile={self.known_hosts}"]
        else:
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "LogLevel=ERROR"]
        return [*argv, f"{self.user or h.ssh_user}@{h.address}", *command]

    def shell(self, server: str) -> int:
        """An interactive login shell on ``server`` (Fabric's Connection.shell)."""
        conn = self.connection(server)
        try:
            return conn.shell().exited
        finally:
            conn.close()


def _journal_cmd(units: Iterable[str], lines: int, since: str | None, *, follow: bool) -> str:
    names = list(units) or list(UNITS)
    unknown = [u for u in names if u not in UNITS and not u.endswith(".service")]
    if unknown:
        raise ValueError(f"unknown unit(s) {unknown}: one of {', '.join(UNITS)}")
    args = ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(int(lines))]
    for u in names:
        args += ["-u", UNITS.get(u, u)]
    if since:
        args += ["--since", since]
    if follow:
        args.append("-f")
    return shlex.join(args)


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[-1][:300]}"


def _result(name: str, r: Any) -> CommandResult:
    """A Fabric Result (run), transfer Result (put) or exception, as a CommandResult."""
    if isinstance(r, BaseException):
        from invoke.exceptions import UnexpectedExit
        if isinstance(r, UnexpectedExit):
            res = r.result
            return CommandResult(host=name, ok=False, exited=res.exited, stdout=res.stdout,
                                 stderr=res.stderr)
        return CommandResult(host=name, ok=False, error=_why(r))
    exited = getattr(r, "exited", None)
    if exited is None:  # a transfer
        return CommandResult(host=name, ok=True)
    return CommandResult(host=name, ok=exited == 0, exited=exited, stdout=r.stdout,
                         stderr=r.stderr)


class _LineWriter:
    """A file-like sink that hands complete lines, with their server, to ``write``."""

    def __init__(self, host: str, write: Callable[[str, str], None]) -> None:
        self.host = host
        self.write_line = write
        self.buf = ""
        self.lock = threading.Lock()

    def write(self, data: str) -> int:
        with self.lock:
            self.buf += data.replace("\r\n", "\n").replace("\r", "\n")
            *done, self.buf = self.buf.split("\n")
        for line in done:
            self.write_line(self.host, line)
        return len(data)

    def flush(self) -> None:
        with self.lock:
            rest, self.buf = self.buf, ""
        if rest:
            self.write_line(self.host, rest)


def parse_install_output(result: CommandResult) -> dict[str, Any]:
    """The appshot installer's JSON summary from a `push_appshot` result."""
    for line in reversed(result.stdout.strip().splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(line)
    return {"ok": False, "error": result.error or result.stderr.strip() or "no output"}
