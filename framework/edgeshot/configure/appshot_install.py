"""Install a packed appshot into an agent's store on the server itself, verified.

Used on the server by the `appshot` role's module and by `push_appshot` (Fabric,
over SFTP, when the controller cannot reach the agent's API)::

    python -m edgeshot.configure.appshot_install TARBALL NAME [--state-dir DIR]

An appshot already in the store is verified again (signature, every checksum);
if it no longer verifies it is moved aside and replaced from the tarball.
Nothing reaches the store unless it verifies against the keys the server
trusts (its own and ``<state_dir>/trusted.d/*.pub``). Prints one JSON line.
Needs only edgeshot's base dependencies (no Ansible, no Fabric).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeshot.agent import appshots as A

DEFAULT_STATE = Path("/var/lib/edgeshot")


class InstallError(Exception):
    """The appshot cannot be installed (message says why; never key material)."""


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    changed: bool
    manifest: A.Manifest | None

    def summary(self) -> dict[str, object]:
        m = self.manifest
        return {
            "name": self.name,
            "path": str(self.path),
            "changed": self.changed,
            "app": m.app if m else None,
            "version": m.version if m else None,
            "kind": m.kind if m else None,
            "signer": m.signer if m else None,
            "files": len(m.files) if m else None,
        }


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or name in ("..",) or len(name) > 200:
        raise InstallError(f"invalid appshot name {name!r}")
    return name


def install(tarball: str | os.PathLike[str], name: str,
            state_dir: str | os.PathLike[str] = DEFAULT_STATE, *, check: bool = False
            ) -> Installed:
    """Make ``<state_dir>/appshots/<name>`` a verified copy of ``tarball``'s appshot."""
    name = _check_name(name)
    host = A.Host(state_dir=Path(state_dir))
    store = host.state_dir / "appshots"
    dest = store / name
    trust = host.trust()
    if dest.exists():
        try:
            manifest = A.verify(dest, trust, cached=False)
            return Installed(name, dest, False, manifest)
        except (A.AppshotRejected, A.IncompatibleCPU) as exc:
            if isinstance(exc, A.IncompatibleCPU):
                raise InstallError(f"appshot {name}: {exc}") from None
            if check:
                return Installed(name, dest, True, None)
            aside = store / f".{name}.rejected-{int(time.time())}"
            dest.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
    if check:
        return Installed(name, dest, True, None)
    if not Path(tarball).is_file():
        raise InstallError(f"appshot {name}: no tarball at {tarball}")
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        A.unpack(Path(tarball), dest, trust)
        manifest = A.verify(dest, trust, cached=False)
    except (A.AppshotRejected, A.IncompatibleCPU) as exc:
        if dest.exists() and isinstance(exc, A.IncompatibleCPU):
            shutil.rmtree(dest, ignore_errors=True)
        raise InstallError(f"appshot {name}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InstallError(f"appshot {name}: {exc}") from None
    return Installed(name, dest, True, manifest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeshot.configure.appshot_install",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("tarball")
    ap.add_argument("name")
    ap.add_argument("--state-dir", default=str(DEFAULT_STATE))
    ap.add_argument("--remove-tarball", action="store_true",
                    help="delete the tarball once installed")
    args = ap.parse_args(argv)
    try:
        res = install(args.tarball, args.name, args.state_dir)
    except InstallError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    if args.remove_tarball:
        Path(args.tarball).unlink(missing_ok=True)
    print(json.dumps({"ok": True, **res.summary()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
