"""`EdgeLink` over the edge API, through the edge's own client (`edgeshot.edge.client`).

Placements go out as the whole set (PUT) when the set or an app changes, and as
per-placement updates (PATCH: weights, share, ceiling — no reload at the edge)
otherwise, so that a canary step or a rollback is one small call per edgepoint.
After the edge process restarted (it answers 404 for a placement, or it was
unreachable) the next push is a whole set again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._config_file import toml_text
from ..agent.auth import read_secret, token_hash
from ._edges import (
    EdgeStatus,
    PlacementOrder,
    PlacementRefused,
    PlacementStatus,
    VersionFigures,
)


def _percentile_field(pct: float) -> str:
    return "p50_ms" if pct <= 50 else "p95_ms" if pct <= 95 else "p99_ms"


class HttpEdgeLink:
    def __init__(self, name: str, url: str, token: str, timeout: float = 2.0) -> None:
        from edgeshot.edge.client import EdgeClient

        self.name = name
        self.url = url
        self.client = EdgeClient(url, token, timeout=timeout, retries=1)
        self._sent: dict[str, PlacementOrder] | None = None  # None: send the whole set
        self._percentile: dict[str, float] = {}

    async def status(self) -> EdgeStatus:
        from edgeshot.edge.client import EdgeError

        try:
            load = await self.client.load()
        except EdgeError:
            self._sent = None
            raise
        total = sum(s.slots_total or 0 for s in load.servers)
        free = sum(s.slots_free or 0 for s in load.servers)
        placements = {}
        full = []
        # Only placements this link has assigned and the edge confirmed (its PUT answers
        # once HAProxy was reloaded with them): the edge lists a new placement at once, its
        # data path a moment later, and users must not be sent there in between.
        confirmed = self._sent or {}
        for p in load.placements:
            if p.id not in confirmed:
                continue
            field = _percentile_field(self._percentile.get(p.id, 95.0))
            # Takes no more users: no server has room (at capacity), or it is held below
            # its demand by a limit (its share of the global maximum, its cost ceiling).
            saturated = p.at_capacity or p.desired > p.target
            if saturated:
                full.append(p.id)
            placements[p.id] = PlacementStatus(
                p.id, p.app, saturated,
                {v.version: VersionFigures(v.requests, v.errors, getattr(v, field), v.ready)
                 for v in p.versions})
        return EdgeStatus(
            self.name, True, load=(total - free) / total if total else 0.0,
            capacity={"slots_total": total, "slots_free": free, "mode": load.mode,
                      "at_capacity": full,
                      "servers": {s.name: {"healthy": s.healthy, "instances": s.instances,
                                           "slots_free": s.slots_free} for s in load.servers},
                      "instances": {p.id: {"ready": p.ready, "starting": p.starting,
                                           "snapshotted": p.snapshotted, "draining": p.draining}
                                    for p in load.placements}},
            placements=placements)

    async def set_placements(self, orders: list[PlacementOrder]) -> None:
        from edgeshot.edge.client import NotFound
        from edgeshot.edge.models import VersionWeight

        for o in orders:
            self._percentile[o.id] = float(o.placement.get("scaling", {}).get("percentile", 95))
        new = {o.id: o for o in orders}
        sent = self._sent
        if sent is not None and sent.keys() == new.keys() and all(
                _same_apps(sent[k], new[k]) for k in new):
            try:
                for k, o in new.items():
                    if o != sent[k]:
                        await self.client.update_placement(
                            k, versions=[VersionWeight(version=v.version, weight=v.weight,
                                                       appshot=v.appshot) for v in o.versions],
                            global_share=o.global_share, cost_ceiling=o.cost_ceiling)
                self._sent = new
                return
            except NotFound:
                pass  # the edge restarted: send the whole set
        from edgeshot.edge.client import Invalid

        try:
            await self.client.set_placements([_assignment(o) for o in orders])
        except Invalid as exc:
            if exc.code != "refused":
                raise
            self._sent = None  # it kept its old assignment of those: send the whole set again
            ids = frozenset(d.split()[1] for d in exc.detail if d.startswith("placement "))
            raise PlacementRefused(exc.message, ids) from None
        self._sent = new

    async def close(self) -> None:
        await self.client.close()


def _same_apps(a: PlacementOrder, b: PlacementOrder) -> bool:
    """Same versions (each with the same plan): only weights, share or ceiling differ."""
    return ([(v.version, json.dumps(v.plan, sort_keys=True)) for v in a.versions]
            == [(v.version, json.dumps(v.plan, sort_keys=True)) for v in b.versions]
            and a.placement == b.placement
            and getattr(a, "stage", None) == getattr(b, "stage", None))


def _assignment(o: PlacementOrder) -> Any:
    from edgeshot.edge.models import PlacementAssignment, VersionWeight
    from edgeshot.plan import AppPlan, Placement

    primary = o.versions[0]
    placement = Placement.model_validate({**o.placement, "version": primary.version})
    return PlacementAssignment(
        placement=placement, app=AppPlan.model_validate(primary.plan),
        versions=tuple(VersionWeight(version=v.version, weight=v.weight, appshot=v.appshot)
                       for v in o.versions),
        global_share=o.global_share, cost_ceiling=o.cost_ceiling, **_stage(o))


def _stage(o: PlacementOrder) -> dict[str, Any]:
    """The staged version's route (issue 10's staging), when the order carries one."""
    if getattr(o, "stage", None) is None:
        return {}
    from edgeshot.edge.models import StageRoute
    return {"stage": StageRoute.model_validate(o.stage)}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- local network files


def write_edge_configs(state: Path, plan: Any, tokens: dict[str, str],
                       edges: dict[str, dict[str, Any]], options: dict[str, Any]) -> str | None:
    """One edge process configuration per edgepoint; a note when this tree has no edge
    process (then none is started)."""
    from ._localnet import edge_available

    if not edge_available():
        return "the edge process (edgeshot.edge.service) is not in this tree"
    for ep in plan.edgepoints:
        host = next(s for s in plan.servers if s.name == ep.edge_host)
        e = edges[ep.name]
        cfg: dict[str, Any] = {
            "edgepoint": ep.name, "listen": host.address, "http_port": host.ports["http"],
            "api_port": host.ports["edge"], "state_dir": e["state_dir"],
            "tokens_file": str(state / "tokens" / "edge.toml"),
            "agent_token_file": tokens[f"edge-agent-{ep.name}"], **options}
        cfg["agents"] = [{"name": s.name, "url": f"http://{s.address}:{s.ports['agent']}"}
                         for s in plan.servers if s.edgepoint == ep.name]
        if "dispatcher-hop" in tokens:  # the edges trust the region the dispatcher sets
            cfg["dispatcher_hop_sha256"] = token_hash(read_secret(tokens["dispatcher-hop"]))
        text = toml_text(cfg)
        path = Path(e["config"])
        path.write_text(text)
        os.chmod(path, 0o600)
    return None


def edge_argv(python: str, config: str) -> list[str]:
    return [python, "-m", "edgeshot.cli.edge", "--config", config]
