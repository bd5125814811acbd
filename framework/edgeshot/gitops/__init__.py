"""edgeshot.gitops: the plan diff of a pull request, posted as one comment kept up to date.

    target = target_from_env(os.environ)            # GitHub Actions or GitLab CI
    body = build(diff_markdown, CommentInput(key="policy.py", outcome=outcome_of(rc),
                 artifact_url=...), LIMITS[target.platform])
    posted = asyncio.run(upsert(target, "policy.py", body))   # created | updated | unchanged

The workflows in examples/gitops/ call it as ``edgeshot gitops comment``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._comment import LIMITS, CommentInput, Outcome, build, has_marker, marker, outcome_of, trim
from ._platforms import ForgeError, GitHub, GitLab, Posted

__all__ = ["LIMITS", "CommentInput", "ForgeError", "GitHub", "GitLab", "Outcome", "Posted",
           "Target", "TargetError", "build", "has_marker", "marker", "outcome_of",
           "target_from_env", "trim", "upsert"]

Platform = Literal["github", "gitlab"]


class TargetError(ValueError):
    """The CI environment does not say where to post (every missing variable named)."""


@dataclass(frozen=True)
class Target:
    """Where the comment goes, and the CI run's own links. ``token`` is never printed."""

    platform: Platform
    api_url: str
    project: str            # GitHub owner/name; GitLab project id or path
    number: int             # pull request number; merge request iid
    token: str = field(repr=False)
    commit: str = ""
    run_url: str = ""
    artifact_url: str = ""  # where the CI run keeps the full diff, when known in advance


def _detect(env: Mapping[str, str]) -> Platform | None:
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    if env.get("GITLAB_CI") == "true":
        return "gitlab"
    return None


def target_from_env(env: Mapping[str, str], platform: Platform | None = None,
                    number: int | None = None, artifact_name: str = "plan-diff.md") -> Target:
    """The target of a GitHub Actions pull_request job or a GitLab CI merge request
    pipeline, from the variables those platforms set (and the token the job passes in:
    ``GITHUB_TOKEN``, ``GITLAB_TOKEN``)."""
    platform = platform or _detect(env)
    if platform is None:
        raise TargetError("not in GitHub Actions nor GitLab CI (neither GITHUB_ACTIONS nor "
                          "GITLAB_CI is 'true'): pass --platform github|gitlab")
    if platform == "github":
        need = ["GITHUB_TOKEN", "GITHUB_REPOSITORY"] + ([] if number else ["PR_NUMBER"])
    else:
        need = ["GITLAB_TOKEN", "CI_API_V4_URL", "CI_PROJECT_ID"] + (
            [] if number else ["CI_MERGE_REQUEST_IID"])
    missing = [n for n in need if not env.get(n)]
    if missing:
        hint = (" (GITHUB_TOKEN: `env: GITHUB_TOKEN: ${{ github.token }}` with `permissions: "
                "pull-requests: write`; PR_NUMBER: ${{ github.event.pull_request.number }})"
                if platform == "github" else
                " (GITLAB_TOKEN: a project access token with the api scope, as a masked CI/CD "
                "variable; CI_MERGE_REQUEST_IID: run the job in merge request pipelines)")
        raise TargetError(f"{platform}: missing {', '.join(missing)}{hint}")
    raw = number or (env["PR_NUMBER"] if platform == "github" else env["CI_MERGE_REQUEST_IID"])
    try:
        num = int(raw)
    except ValueError:
        raise TargetError(f"{platform}: pull/merge request number {raw!r} is not a number") \
            from None
    if platform == "github":
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run = (f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
               if env.get("GITHUB_RUN_ID") else "")
        return Target("github", env.get("GITHUB_API_URL", "https://api.github.com"),
                      env["GITHUB_REPOSITORY"], num, env["GITHUB_TOKEN"],
                      commit=env.get("PR_HEAD_SHA", env.get("GITHUB_SHA", "")), run_url=run,
                      artifact_url=env.get("ARTIFACT_URL", ""))
    job = env.get("CI_JOB_URL", "")
    return Target("gitlab", env["CI_API_V4_URL"], env["CI_PROJECT_ID"], num, env["GITLAB_TOKEN"],
                  commit=env.get("CI_COMMIT_SHA", ""), run_url=job,
                  artifact_url=env.get("ARTIFACT_URL") or (
                      f"{job}/artifacts/file/{artifact_name}" if job else ""))


async def upsert(target: Target, key: str, body: str) -> Posted:
    """Post ``body`` as the comment for ``key``, editing the one an earlier push left."""
    cls = GitHub if target.platform == "github" else GitLab
    async with cls(target.api_url, target.token, target.project, target.number) as forge:
        return await forge.upsert(key, body)
