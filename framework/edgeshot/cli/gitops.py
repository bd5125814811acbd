"""`edgeshot gitops comment`: post a pull request's plan diff as one comment, updated in place.

Called by the CI workflows of examples/gitops/ after `edgeshot plan --diff`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._common import fail

app = typer.Typer(help="Pull-request workflows (examples/gitops/).", no_args_is_help=True)
out = Console()


@app.command()
def comment(
    diff_file: Annotated[Path, typer.Argument(
        help="What `edgeshot plan FILE --diff BASE --format markdown` printed (or its errors).")],
    exit_code: Annotated[int, typer.Option(
        "--exit-code", help="`edgeshot plan --diff`'s exit code: 0 no changes, 2 changes, "
        "else it failed.")],
    key: Annotated[str, typer.Option(
        "--key", help="The policy file: one comment per file and pull request.")],
    platform: Annotated[str | None, typer.Option(
        "--platform", help="github or gitlab (default: the CI this runs in).")] = None,
    number: Annotated[int | None, typer.Option(
        "--number", help="Pull/merge request number (default: PR_NUMBER or "
        "CI_MERGE_REQUEST_IID).")] = None,
    artifact_url: Annotated[str | None, typer.Option(
        "--artifact-url", help="Link to the full diff (default: ARTIFACT_URL, or the GitLab "
        "job's artifact).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the comment instead of posting it.")] = False,
) -> None:
    """Post (or edit) the plan comment of this pull request; trimmed to the platform's limit
    with a link to the full diff."""
    from edgeshot.gitops import (
        LIMITS,
        CommentInput,
        ForgeError,
        TargetError,
        build,
        outcome_of,
        target_from_env,
        upsert,
    )

    if platform not in (None, "github", "gitlab"):
        raise fail(f"--platform {platform}: must be github or gitlab")
    try:
        text = diff_file.read_text(errors="replace")
    except OSError as exc:
        raise fail(f"{diff_file}: cannot read the plan diff ({exc.strerror or exc})") from None
    env = dict(os.environ)
    if artifact_url:
        env["ARTIFACT_URL"] = artifact_url
    try:
        target = target_from_env(env, platform, number, artifact_name=diff_file.name)  # type: ignore[arg-type]
    except TargetError as exc:
        if not dry_run:
            raise fail(str(exc)) from None
        target = None
    info = CommentInput(key=key, outcome=outcome_of(exit_code),
                        commit=target.commit if target else "",
                        artifact_url=target.artifact_url if target else (artifact_url or ""),
                        run_url=target.run_url if target else "")
    body = build(text, info, LIMITS[target.platform if target else (platform or "github")])
    if dry_run or target is None:
        print(body, end="")
        return
    try:
        posted = asyncio.run(upsert(target, key, body))
    except ForgeError as exc:
        raise fail(f"{target.platform}: cannot post the plan comment: {exc}") from None
    out.print(f"{posted.action} plan comment {posted.id} {posted.url}", highlight=False,
              soft_wrap=True)
