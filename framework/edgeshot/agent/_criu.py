"""Finding CRIU and running it; the reason it cannot run is stated once.

`make system` installs CRIU into the venv (scripts/setup.d/20-criu.sh) because
Debian 12's 3.17 fails `criu check` on this kernel. EDGESHOT_CRIU overrides.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from ._sys import is_root, log

MIN_VERSION = (4, 2)


class CriuError(RuntimeError):
    """CRIU failed; the message carries the relevant lines of its log."""


class CriuStatus(BaseModel):
    usable: bool
    reason: str
    path: str | None = None
    version: str | None = None


def criu_path() -> str | None:
    env = os.environ.get("EDGESHOT_CRIU")
    if env:
        return env
    venv = Path(sys.prefix) / "bin" / "criu"
    if venv.exists():
        return str(venv)
    return shutil.which("criu") or next(
        (p for p in ("/usr/local/sbin/criu", "/usr/sbin/criu") if Path(p).exists()), None
    )


@functools.cache
def status() -> CriuStatus:
    """Whether CRIU can checkpoint and restore here; logs the reason once if not."""
    st = _probe()
    if not st.usable:
        log.warning("CRIU unavailable, instances will cold-start: %s", st.reason)
    return st


def _probe() -> CriuStatus:
    if not is_root():
        return CriuStatus(usable=False, reason="not root (CRIU and namespaces need root)")
    path = criu_path()
    if not path:
        return CriuStatus(usable=False, reason="criu not installed (run `make system` as root)")
    if not os.access(path, os.X_OK):
        return CriuStatus(usable=False, path=path, reason=f"{path} is not an executable")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", out)
    version = ".".join(g for g in m.groups() if g) if m else None
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_VERSION:
        return CriuStatus(usable=False, path=path, version=version,
                          reason=f"criu {version} at {path} is older than 4.2 (run `make system`)")
    chk = subprocess.run([path, "check"], capture_output=True, text=True)
    if chk.returncode != 0:
        lines = (chk.stderr or chk.stdout).strip().splitlines()[-3:]
        return CriuStatus(usable=False, path=path, version=version,
                          reason="`criu check` fails: " + " | ".join(lines))
    return CriuStatus(usable=True, path=path, version=version, reason="ok")


def binary() -> str:
    st = status()
    if not st.usable or not st.path:
        raise CriuError(f"CRIU unavailable: {st.reason}")
    return st.path


def log_errors(log_file: Path, limit: int = 8) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no CRIU log)"
    errs = [ln for ln in lines if "Error" in ln or "error" in ln]
    return "\n".join((errs or lines)[-limit:])


def run(
    command: str,
    args: Sequence[str],
    *,
    log_file: Path,
    pass_fds: Sequence[int] = (),
    preexec_fn=None,
    timeout: float = 120,
    wrap: Callable[[list[str]], list[str]] | None = None,
    spawn: Callable[[list[str]], subprocess.Popen[bytes]] | None = None,
    stderr_text: Callable[[subprocess.Popen[bytes]], str] | None = None,
) -> None:
    """Run ``criu COMMAND ARGS`` with its log in ``log_file``; raise CriuError on failure.

    ``wrap`` rewrites the command line (e.g. a cgroup join in front of it); ``spawn``
    launches it instead of a Popen here (a pod's kit), ``stderr_text`` then reads what it
    wrote to stderr. Prefer either to ``preexec_fn``: with a preexec_fn Python forks the
    whole agent instead of vforking."""
    cmd = [binary(), command, *args, "-o", str(log_file),
           "-v4" if os.environ.get("EDGESHOT_CRIU_DEBUG") else "-v2"]
    if wrap is not None:
        cmd = wrap(cmd)
    if spawn is not None:
        proc = spawn(cmd)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CriuError(f"criu {command} timed out after {timeout}s (log {log_file})") \
                from None
        err = stderr_text(proc) if stderr_text is not None else ""
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, pass_fds=tuple(pass_fds),
                                preexec_fn=preexec_fn)
        try:
            _, raw = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CriuError(f"criu {command} timed out after {timeout}s (log {log_file})") \
                from None
        err = raw.decode(errors="replace")
    if proc.returncode != 0:
        detail = log_errors(log_file)
        if err.strip() and not log_file.exists():
            detail = f"exit {proc.returncode}: {err.strip()[-2000:]}"
        if proc.returncode in (125, 126, 127) and (wrap is not None or spawn is not None):
            what = {125: "could not open the slot's network namespace",
                    126: "could not join the pod's cgroup", 127: "could not run criu"}
            detail = f"{what[proc.returncode]}: {err.strip()}"
        raise CriuError(f"criu {command} failed (log {log_file}):\n{detail}")


def popen(command: str, args: Sequence[str], *, log_file: Path, pass_fds: Sequence[int] = (),
          preexec_fn=None, verbosity: int = 2) -> subprocess.Popen[bytes]:
    cmd = [binary(), command, *args, "-o", str(log_file), f"-v{verbosity}"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=tuple(pass_fds), preexec_fn=preexec_fn)
