"""Per-pod log pump: tier stdout/stderr arrive through pipes and land in rotated files.

Why pipes and not files: CRIU refuses to restore a process whose open regular
file changed size since the dump, and logs keep growing. A pipe end is
replaced at restore (``--inherit-fd fd[N]:pipe:[inode]``) by a fresh pipe to
a fresh pump, so logs never break a restore. The pump runs in its own session,
outside the pod: it survives an agent restart and exits when the pod's last
writer is gone.

Usage: python -m edgeshot.agent._logpump DIR NAME=FD [NAME=FD ...]
"""

from __future__ import annotations

import os
import selectors
import sys
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
KEEP = 3


class _Sink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = self._open()

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    sel = selectors.DefaultSelector()
    for spec in argv[1:]:
        name, _, fd = spec.partition("=")
        sel.register(int(fd), selectors.EVENT_READ, _Sink(out / f"{name}.log"))
    while sel.get_map():
        for key, _ in sel.select():
            try:
                data = os.read(key.fd, 65536)
            except InterruptedError:
                continue
            if not data:
                sel.unregister(key.fd)
                os.close(key.fd)
                continue
            try:
                key.data.write(data)
            except OSError:
                pass  # a full disk must not stall the pod: drop the lines
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
