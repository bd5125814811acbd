"""A wheelhouse: edgeshot and its dependencies as wheels, for servers without a package index.

The edge_agent role installs from it (``edge_agent_wheelhouse``) with ``pip --no-index``.
The wheels are built for this machine's Python; servers must run the same minor
version (Debian 12: 3.11).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def source_tree() -> Path:
    """The edgeshot source tree this package runs from (the directory of pyproject.toml)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "framework" / "edgeshot").is_dir():
            return parent
    raise FileNotFoundError("edgeshot does not run from a source tree: pass project=")


def build_wheelhouse(dest: str | os.PathLike[str], project: str | os.PathLike[str] | None = None,
                     *, python: str = sys.executable) -> Path:
    """Fill ``dest`` with a fresh edgeshot wheel, wheels of its dependencies and pip's.

    Dependencies already in ``dest`` are reused without asking any index; only what is
    missing is downloaded (``pip wheel``, from the configured index).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("edgeshot-*.whl"):
        old.unlink()
    src = str(Path(project) if project else source_tree())
    base = [python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
            "--wheel-dir", str(dest), "--find-links", str(dest)]
    # Offline first: the build backend from this environment, dependencies from ``dest``.
    # pip itself too: servers then need no python3-venv/ensurepip (venv --without-pip).
    for what in ([src], ["pip"]):
        offline = subprocess.run([*base, "--no-index", "--no-build-isolation", *what],
                                 capture_output=True, text=True)
        if offline.returncode != 0:
            online = subprocess.run([*base, *what], capture_output=True, text=True)
            if online.returncode != 0:
                raise RuntimeError(f"pip wheel {' '.join(what)} failed:\n{online.stderr[-3000:]}")
    return dest
