"""Field-by-field differences between two plans, for reviewers (pull-request comments).

Resources are keyed by what stays the same across a change (a server's name,
an app's name, a placement's app/edgepoint), so a version bump reads as a
change, not as destroy-and-create.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

from ._models import Money, Plan, PlanModel, gc_paused

Kind = Literal["server", "controller", "edgepoint", "app", "placement", "network"]


class FieldChange(PlanModel):
    path: str
    old: Any = None
    new: Any = None


class Change(PlanModel):
    action: Literal["add", "change", "remove"]
    kind: Kind
    id: str
    fields: tuple[FieldChange, ...] = ()
    monthly_delta: Money | None = None


class PlanDiff(PlanModel):
    changes: tuple[Change, ...]
    infrastructure_delta: Money
    apps_delta: Money  # change of the apps' upper cost estimates

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def summary(self) -> str:
        """'Plan: 3 to add, 1 to change, 0 to destroy; cost +41.00 EUR/month servers'.

        Each cost says what it is: the servers' price, or the apps' upper estimate.
        """
        text = (f"Plan: {self.count('add')} to add, {self.count('change')} to change, "
                f"{self.count('remove')} to destroy")
        costs = [(m, what) for m, what in ((self.infrastructure_delta, "servers"),
                                           (self.apps_delta, "apps (upper estimate)")) if m.amount]
        if costs:
            text += "; cost " + ", ".join(f"{_signed(m)}/month {what}" for m, what in costs)
        return text


def _signed(m: Money) -> str:
    sign = "+" if m.amount >= 0 else "-"
    return f"{sign}{abs(m.amount):.2f} {m.currency}"


def _resources(plan: Plan) -> list[tuple[str, dict[str, BaseModel]]]:
    """Resources by kind, in review order, keyed by what stays the same across changes."""
    return [
        ("controller", {"controller": plan.controller}),
        ("server", {s.name: s for s in plan.servers}),
        ("edgepoint", {e.name: e for e in plan.edgepoints}),
        ("app", {a.name: a for a in plan.apps}),
        ("placement", {p.id: p for p in plan.placements}),
    ]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        labels = [_label(item, i) for i, item in enumerate(value)]
        if len(set(labels)) != len(labels):  # e.g. a warm-up request sent twice: by position
            labels = [str(i) for i in range(len(value))]
        for label, item in zip(labels, value, strict=True):
            _flatten(item, f"{prefix}[{label}]", out)
    else:
        out[prefix] = value


def _label(item: dict[str, Any], index: int) -> str:
    """What names a list item across plans: a tier's name, a route's 'METHOD /path'."""
    name, path, method = item.get("name"), item.get("path"), item.get("method")
    if isinstance(name, str) and name:
        return name
    if isinstance(path, str) and path:
        return f"{method} {path}" if isinstance(method, str) and method else path
    return str(index)


def _fields(old: dict[str, Any] | None, new: dict[str, Any] | None) -> tuple[FieldChange, ...]:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old or {}, "", a)
    _flatten(new or {}, "", b)
    return tuple(
        FieldChange(path=k, old=a.get(k), new=b.get(k))
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    )


def _money(model: BaseModel | None) -> Money | None:
    """What a resource costs a month: a server's price, an app's upper estimate."""
    for attr in ("monthly_cost", "estimate_high"):
        money = getattr(model, attr, None)
        if isinstance(money, Money):
            return money
    return None


def _cost(model: BaseModel | None) -> Decimal:
    money = _money(model)
    return money.amount if money else Decimal(0)


def _change(kind: str, key: str, a: BaseModel | None, b: BaseModel | None) -> Change:
    action = "add" if a is None else "remove" if b is None else "change"
    da = a.model_dump(mode="json") if a is not None else None
    db = b.model_dump(mode="json") if b is not None else None
    delta = _cost(b) - _cost(a)
    currency = (_money(a) or _money(b) or Money(amount=0, currency="")).currency
    return Change(
        action=action, kind=kind, id=key, fields=_fields(da, db),
        monthly_delta=Money(amount=delta, currency=currency) if delta and currency else None,
    )


def diff(old: Plan, new: Plan) -> PlanDiff:
    """Added, changed and removed resources, field by field, with cost deltas."""
    with gc_paused():
        return _diff(old, new)


def _diff(old: Plan, new: Plan) -> PlanDiff:
    changes: list[Change] = []
    if old.pricing != new.pricing or old.provider != new.provider or old.network != new.network:
        head = {"network": old.network, "provider": old.provider, "pricing": old.pricing}
        tail = {"network": new.network, "provider": new.provider, "pricing": new.pricing}
        changes.append(Change(action="change", kind="network", id=new.network, fields=_fields(head, tail)))
    for (kind, before), (_, after) in zip(_resources(old), _resources(new), strict=True):
        differing = [k for k, a in before.items() if after.get(k) != a]
        differing += [k for k in after if k not in before]
        changes += [_change(kind, k, before.get(k), after.get(k)) for k in sorted(differing)]
    infra = new.infrastructure_monthly.amount - old.infrastructure_monthly.amount
    apps = sum((c.monthly_delta.amount for c in changes if c.kind == "app" and c.monthly_delta), Decimal(0))
    return PlanDiff(
        changes=tuple(changes),
        infrastructure_delta=Money(amount=infra, currency=new.infrastructure_monthly.currency),
        apps_delta=Money(amount=apps, currency=str(new.pricing.get("currency", "EUR"))),
    )

