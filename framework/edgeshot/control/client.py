"""The controller's async client: the CLI, the demo and tests use it (no hand-built URLs).

    async with ControllerClient("http://127.0.0.1:7703", token) as ctl:
        print(await ctl.status())
        dep = await ctl.deploy("shop", plan=app_plan_json, canary=10)
        await ctl.rollback("shop")
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

__all__ = ["ControllerClient", "ControllerError", "start_failures"]


def start_failures(status: dict[str, Any]) -> list[str]:
    """Why apps failed to start in the controller's current run (from ``status()``; an
    earlier run's failures are history, not news)."""
    return [a["start"]["message"] for a in status.get("apps", ())
            if (a.get("start") or {}).get("state") == "failed"]


class ControllerError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ControllerClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0,
                 deploy_timeout: float = 900.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.deploy_timeout = deploy_timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ControllerClient({self.base_url!r})"

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: dict[str, str] | None = None, timeout: float | None = None,
                    retries: int = 2) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        for attempt in range(retries + 1):
            try:
                async with self._session.request(
                        method, self.base_url + path, json=json, params=params, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=timeout or self.timeout,
                                                      sock_connect=5)) as r:
                    body = await r.read()
                    if r.status >= 400:
                        try:
                            err = __import__("json").loads(body)
                            msg, code = err.get("error", body.decode()), err.get("code", "")
                        except ValueError:
                            msg, code = body.decode(errors="replace")[:300], ""
                        raise ControllerError(msg, r.status, code)
                    if r.content_type == "application/json":
                        return __import__("json").loads(body)
                    return body.decode()
            except aiohttp.ClientConnectorError as exc:
                # nothing was sent: safe to try again
                if attempt >= retries:
                    raise ControllerError(f"controller at {self.base_url} unreachable: "
                                          f"{exc.os_error or exc}") from None
                await asyncio.sleep(0.3 * (attempt + 1))
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise ControllerError(f"controller at {self.base_url}: "
                                      f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/health")

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/status")

    async def routing(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/routing")

    async def events(self, after: int = 0, app: str | None = None, limit: int = 100
                     ) -> list[dict[str, Any]]:
        params = {"after": str(after), "limit": str(limit)}
        if app:
            params["app"] = app
        return (await self._call("GET", "/v1/events", params=params))["events"]

    async def deploy(self, app: str, *, version: str | None = None,
                     plan: dict[str, Any] | None = None, canary: int | None = None,
                     source_dir: str | None = None, policy: dict[str, Any] | None = None,
                     override_gate: str | None = None) -> dict[str, Any]:
        """``override_gate``: an operator's logged reason to roll out a version that has
        not passed its capacity test."""
        body = {k: v for k, v in (("version", version), ("plan", plan), ("canary", canary),
                                  ("source_dir", source_dir), ("policy", policy),
                                  ("override_gate", override_gate)) if v is not None}
        res = await self._call("POST", f"/v1/apps/{app}/deploy", json=body,
                               timeout=self.deploy_timeout, retries=0)
        return res["deployment"]

    async def stage(self, app: str, *, version: str | None = None,
                    plan: dict[str, Any] | None = None, source_dir: str | None = None,
                    load_test: dict[str, Any] | None = None, edgepoint: str | None = None,
                    run_test: bool = True) -> dict[str, Any]:
        """Stage a version (reachable with the owner's token only) and run its load test."""
        body = {k: v for k, v in (("version", version), ("plan", plan),
                                  ("source_dir", source_dir), ("load_test", load_test),
                                  ("edgepoint", edgepoint)) if v is not None}
        body["run_test"] = run_test
        return await self._call("POST", f"/v1/apps/{app}/stage", json=body,
                                timeout=self.deploy_timeout, retries=0)

    async def staging(self, app: str) -> dict[str, Any]:
        """The app's staged versions and capacity tests."""
        return await self._call("GET", f"/v1/apps/{app}/stage")

    async def unstage(self, app: str, version: str | None = None) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/apps/{app}/stage",
                                params={"version": version} if version else None, retries=0)

    async def rollback(self, app: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/apps/{app}/rollback", retries=0)

    async def deployment(self, dep_id: int) -> dict[str, Any]:
        return await self._call("GET", f"/v1/deployments/{dep_id}")

    async def deployments(self, app: str) -> list[dict[str, Any]]:
        return (await self._call("GET", f"/v1/apps/{app}/deployments"))["deployments"]

    async def metrics(self) -> str:
        return await self._call("GET", "/metrics")

    # ------------------------------------------------------------------ metering

    async def bill(self, month: str | None = None, owner: str | None = None,
                   by: str = "owner") -> dict[str, Any]:
        """The month's bill (by="vendor": usage per application; "organisation": transfer
        pricing); an owner's token gets its own bill, a vendor's its applications'."""
        params = {"by": by}
        if month:
            params["month"] = month
        if owner:
            params["owner"] = owner
        return await self._call("GET", "/v1/bill", params=params, timeout=120)

    async def budgets(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/v1/budgets"))["budgets"]

    async def usage_sources(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/v1/usage/sources"))["sources"]

    async def collect_usage(self) -> dict[str, Any]:
        """Pull every agent and edge process now (operators)."""
        return await self._call("POST", "/v1/usage/collect", timeout=120, retries=0)
