"""Edgepoints kept out of routing because a server of theirs was not configured.

site.yml's last play writes, on the controller, which servers the configuration
could not set up (a task failed, the server was unreachable, or it has no address
yet), with the `edgeshot_exclusions` module of the controller role:

    {"format": 1, "servers": {"south-1": {"edgepoint": "south", "reason": "..."}}}

The controller reads it at every tick (only when the file changed) and treats each
edgepoint with a server in it as down: no user is routed there and its share of an
app's instances goes to the other edgepoints, until a run configures that server.

Per server rather than per edgepoint, so that a run limited to some servers
(``configure(limit=...)``) judges only those: `merge` keeps what earlier runs said
about the others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT = 1
NOT_CONFIGURED = "not configured by the last run of site.yml (a task failed or it was unreachable)"
NO_ADDRESS = "no address in the inventory (not provisioned yet?)"
log = logging.getLogger("edgeshot.controller")


class ExclusionsError(ValueError):
    """The exclusions file cannot be used (the message names the file and the field)."""


class Excluded(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    edgepoint: str = Field(min_length=1)
    reason: str = NOT_CONFIGURED


class Exclusions(BaseModel):
    """The servers the configuration could not set up, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1] = FORMAT
    servers: dict[str, Excluded] = Field(default_factory=dict)

    def edgepoints(self) -> dict[str, str]:
        """Edgepoint -> why it is kept out of routing (its servers and their reasons)."""
        out: dict[str, list[str]] = {}
        for name, ex in sorted(self.servers.items()):
            out.setdefault(ex.edgepoint, []).append(f"{name}: {ex.reason}")
        return {ep: "; ".join(why) for ep, why in sorted(out.items())}

    def to_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


def merge(previous: Exclusions, servers: Mapping[str, str], configured: Iterable[str],
          missing: Iterable[str] = ()) -> Exclusions:
    """What a run says, over what earlier runs said.

    ``servers``: every server this run judged, name -> edgepoint; ``configured``: those
    it set up completely; ``missing``: those without an address. Servers this run did
    not judge keep their earlier entry."""
    done, absent = set(configured), set(missing)
    kept = {n: ex for n, ex in previous.servers.items() if n not in servers}
    now = {n: Excluded(edgepoint=ep, reason=NO_ADDRESS if n in absent else NOT_CONFIGURED)
           for n, ep in servers.items() if n not in done}
    return Exclusions(servers=dict(sorted({**kept, **now}.items())))


def read(path: str | os.PathLike[str]) -> Exclusions:
    """The file's exclusions; none when it does not exist (no run has written it yet)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Exclusions()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExclusionsError(f"{path}: not JSON: {exc}") from None
    try:
        return Exclusions.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(top)"
        raise ExclusionsError(f"{path}: {where}: {first.get('msg')} (expected "
                              '{"format": 1, "servers": {NAME: {"edgepoint": EP, '
                              '"reason": TEXT}}})') from None


def write(path: str | os.PathLike[str], exclusions: Exclusions) -> bool:
    """Write atomically (the controller reads the old file or the new one, never half)
    unless the file already says the same; True when it wrote."""
    path, text = Path(path), exclusions.to_text()
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


class Watched:
    """The controller's view of the file: re-read only when it changed (one stat a tick).

    A file that turns invalid keeps the last valid exclusions (and says why in
    ``error``): a bad edit must not route users to an edgepoint that is not ready."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self.current = Exclusions()
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        if self.path is not None:
            self.current = read(self.path)  # at start, a bad file is a configuration error
            self._stamp = self._stat()
            if self.current.servers:
                self._announce()

    def _announce(self) -> None:
        log.warning("edgepoints kept out of routing: %s",
                    "; ".join(f"{ep} ({why})" for ep, why in self.current.edgepoints().items())
                    or "none")

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size  # a rewrite is a rename: new inode

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the exclusions changed."""
        if self.path is None:
            return False
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = read(self.path)
        except ExclusionsError as exc:
            self.error = str(exc)
            log.error("%s; still keeping out of routing: %s", exc,
                      ", ".join(self.current.edgepoints()) or "none")
            return False
        self.error = None
        changed = new != self.current
        self.current = new
        if changed:
            self._announce()
        return changed
