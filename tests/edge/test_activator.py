"""The activator behind HAProxy finds the app by the request's routing key.

HAProxy sends it a request only when an app has no ready instance; it no longer tags
the request with the app (that header cost every request), so the activator must find
the same app HAProxy's maps found, and a client cannot pick another app by a header.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from edgeshot.edge._activator import Activator, Router, Target
from edgeshot.edge._haproxy import AppConf, HAProxyConf


def conf(run_dir: Path) -> HAProxyConf:
    return HAProxyConf(edgepoint="e", listen="127.0.0.1", http_port=1, run_dir=run_dir, apps=(
        AppConf("shop", hosts=("shop.example.com",)),
        AppConf("blog", hosts=("blog.example.com",)),
        AppConf("docs", hosts=("example.com",), path_prefix="/docs")))


async def test_behind_haproxy_the_app_is_the_one_of_the_routing_key(tmp_path, unused_tcp_port):
    async def instance(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.path} app-header={request.headers.get('X-Edgeshot-App')}")

    inst = web.AppRunner(web.Application())
    inst.app.router.add_get("/{tail:.*}", instance)
    await inst.setup()
    await web.TCPSite(inst, "127.0.0.1", unused_tcp_port).start()

    picked: list[str] = []
    demanded: list[str] = []

    def pick(app: str, cookie: str | None) -> Target | None:
        picked.append(app)
        return Target("i-1", "1", f"127.0.0.1:{unused_tcp_port}")

    act = Activator(pick=pick, demand=demanded.append, known=lambda app: app != "blog")
    act.set_router(Router(conf(tmp_path)))
    sock = tmp_path / "activator.sock"
    await act.start_unix(sock)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
            cases = [
                # (Host, path, header a client sends, status, app picked)
                ("shop.example.com", "/cart", "docs", 200, "shop"),
                ("SHOP.example.com:8080", "/", None, 200, "shop"),
                ("example.com", "/docs/intro", "shop", 200, "docs"),
                ("example.com", "/other", "shop", 404, None),  # no app has this key
                ("blog.example.com", "/", None, 404, None),  # not placed here (known)
            ]
            for host, path, header, status, app in cases:
                picked.clear()
                headers = {"Host": host} | ({"X-Edgeshot-App": header} if header else {})
                async with s.get(f"http://activator{path}", headers=headers) as r:
                    body = await r.text()
                assert (r.status, picked[:1] or [None]) == (status, [app]), (host, path, body)
                if status == 200:
                    assert body.startswith(path)
    finally:
        await act.stop()
        await inst.cleanup()
