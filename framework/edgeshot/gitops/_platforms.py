"""Find-and-update of the plan comment through GitHub's and GitLab's REST APIs.

Both are ``ApiClient``s (the retry policy, typed errors, a token that never reaches an
error or a log). Creating a comment is never retried after a broken connection (it could
post twice); editing one is.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from edgeshot._api_client import ApiClient, ApiError

from ._comment import has_marker

PER_PAGE = 100
Action = Literal["created", "updated", "unchanged"]


class ForgeError(ApiError):
    """GitHub or GitLab refused a call, or could not be reached."""


@dataclass(frozen=True)
class Posted:
    action: Action
    id: int
    url: str


class _Forge(ApiClient, ABC):
    error = ForgeError
    unavailable = ForgeError
    platform: ClassVar[str]

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0) -> None:
        super().__init__(api_url, token, timeout=timeout, connect_timeout=10.0)

    async def _json(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None, safe: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        _, raw = await self._call(method, path, params=params, data=data, headers=headers,
                                  safe=safe)
        return json.loads(raw) if raw else None

    async def _pages(self, path: str, params: dict[str, Any] | None = None
                     ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            batch = await self._json("GET", path, params={**(params or {}),
                                                          "per_page": PER_PAGE, "page": page})
            if not isinstance(batch, list):
                raise ForgeError(f"GET {path}: expected a list of comments, got "
                                 f"{type(batch).__name__}")
            found += batch
            if len(batch) < PER_PAGE:
                return found
            page += 1

    # each platform (GitHub, GitLab) says where its pull request's comments live
    @abstractmethod
    async def comments(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def create(self, body: str) -> dict[str, Any]: ...

    @abstractmethod
    async def update(self, comment_id: int, body: str) -> dict[str, Any]: ...

    @staticmethod
    def url_of(comment: dict[str, Any]) -> str:
        return str(comment.get("html_url") or comment.get("url") or "")

    async def upsert(self, key: str, body: str) -> Posted:
        """Edit the comment carrying ``key``'s marker, or post it if there is none yet."""
        mine = [c for c in await self.comments() if has_marker(c.get("body"), key)]
        if not mine:
            c = await self.create(body)
            return Posted("created", int(c["id"]), self.url_of(c))
        first = mine[0]
        if first.get("body") == body:
            return Posted("unchanged", int(first["id"]), self.url_of(first))
        c = await self.update(int(first["id"]), body)
        return Posted("updated", int(c["id"]), self.url_of(c))


class GitHub(_Forge):
    """A pull request's conversation (comments of the issue behind the pull request)."""

    platform = "github"

    def __init__(self, api_url: str, token: str, repository: str, number: int,
                 **kw: Any) -> None:
        super().__init__(api_url, token, **kw)
        self.repository = repository
        self.number = number

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return super()._headers({"Accept": "application/vnd.github+json",
                                 "X-GitHub-Api-Version": "2022-11-28", **(extra or {})})

    async def comments(self) -> list[dict[str, Any]]:
        return await self._pages(f"/repos/{self.repository}/issues/{self.number}/comments")

    async def create(self, body: str) -> dict[str, Any]:
        return await self._json("POST", f"/repos/{self.repository}/issues/{self.number}/comments",
                                body={"body": body}, safe=False)

    async def update(self, comment_id: int, body: str) -> dict[str, Any]:
        return await self._json("PATCH", f"/repos/{self.repository}/issues/comments/{comment_id}",
                                body={"body": body})


class GitLab(_Forge):
    """A merge request's notes. The token is a project or personal access token with the
    ``api`` scope (a job token cannot write notes), sent as ``PRIVATE-TOKEN``."""

    platform = "gitlab"

    def __init__(self, api_url: str, token: str, project: str, iid: int, **kw: Any) -> None:
        super().__init__(api_url, token, **kw)
        self.project = quote(str(project), safe="")  # an id, or a path like group/name
        self.iid = iid

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self._token, **(extra or {})}

    @property
    def _notes(self) -> str:
        return f"/projects/{self.project}/merge_requests/{self.iid}/notes"

    async def comments(self) -> list[dict[str, Any]]:
        notes = await self._pages(self._notes, {"sort": "asc", "order_by": "created_at"})
        return [n for n in notes if not n.get("system")]

    async def create(self, body: str) -> dict[str, Any]:
        return await self._json("POST", self._notes, body={"body": body}, safe=False)

    async def update(self, comment_id: int, body: str) -> dict[str, Any]:
        return await self._json("PUT", f"{self._notes}/{comment_id}", body={"body": body})
