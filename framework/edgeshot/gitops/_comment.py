"""The pull-request comment: marker, body, trimming. Pure functions over strings.

One comment per pull request and policy file, found again on the next push by a hidden
HTML marker and edited in place, so a busy pull request keeps one plan comment, always
the latest. Past the platform's size limit the diff is cut at a line, every block it
opened is closed again (so the rest of the page renders), and a link to the full diff
(the CI artifact) takes the place of what was cut.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from typing import Literal

# Largest comment body each platform accepts, in characters: GitHub's REST API refuses a
# body above 65,536 ("body is too long"); GitLab's notes are limited to 1,000,000.
LIMITS = {"github": 65_536, "gitlab": 1_000_000}

Outcome = Literal["changes", "no-changes", "error"]
# `edgeshot plan --diff` exit codes (cli/__init__.py): 0 no changes, 2 changes, else error
OUTCOMES: dict[int, Outcome] = {0: "no-changes", 2: "changes"}

_MARKER = "<!-- edgeshot-plan-comment key={key} -->"
_KEY = re.compile(r"<!-- edgeshot-plan-comment key=(\S+) -->")
_OPEN = re.compile(r"<details\b", re.I)
_CLOSE = re.compile(r"</details\s*>", re.I)


def outcome_of(exit_code: int) -> Outcome:
    """What `edgeshot plan --diff` said by its exit code."""
    return OUTCOMES.get(exit_code, "error")


def marker(key: str) -> str:
    """The hidden marker naming the comment of one policy file (``key``: its path)."""
    safe = re.sub(r"[^A-Za-z0-9._/@+-]", "_", key.strip()) or "default"
    return _MARKER.format(key=safe)


def has_marker(body: str | None, key: str) -> bool:
    """Whether ``body`` is the comment ``marker(key)`` starts (not one quoting it later)."""
    return bool(body) and body.lstrip().startswith(marker(key))


@dataclass(frozen=True)
class CommentInput:
    """What a comment says, besides the diff itself."""

    key: str                       # the policy file: one comment per file
    outcome: Outcome
    commit: str = ""               # the pull request's head commit
    artifact_url: str = ""         # the full diff, kept by the CI run
    run_url: str = ""              # the CI run that made it


def _close_blocks(text: str) -> str:
    """Close a code fence and every <details> the kept part of a cut text left open."""
    tail = []
    if text.count("```") % 2:
        tail.append("```")
    tail += ["</details>"] * max(0, len(_OPEN.findall(text)) - len(_CLOSE.findall(text)))
    return text.rstrip("\n") + ("\n" + "\n".join(tail) if tail else "") + "\n"


def trim(text: str, budget: int, note: str) -> tuple[str, bool]:
    """``text`` if it fits in ``budget`` characters; else its first lines, blocks closed,
    then ``note``, all within ``budget``. Returns (text, whether it was cut)."""
    if len(text) <= budget:
        return text, False
    if budget < len(note) + 1:
        raise ValueError(f"a budget of {budget} characters cannot hold the note itself")
    lines = text.splitlines(keepends=True)
    ends = list(itertools.accumulate(len(line) for line in lines))  # ends[i]: lines[:i+1]
    keep = bisect.bisect_right(ends, budget - len(note) - 1)  # the most lines that may fit
    while keep > 0:
        out = _close_blocks("".join(lines[:keep])) + "\n" + note
        if len(out) <= budget:
            return out, True
        keep -= 1
    return note, True


def build(diff: str, info: CommentInput, limit: int) -> str:
    """The whole comment for ``diff`` (``edgeshot plan --diff --format markdown`` output, or
    the error it printed), within ``limit`` characters."""
    head = marker(info.key) + "\n"
    if info.outcome == "error":
        head += (f"### edgeshot plan failed for `{info.key}`\n\n"
                 "The policy did not compile; nothing will be deployed from this commit.\n\n")
        diff = "```\n" + diff.replace("```", "ʼʼʼ").rstrip("\n") + "\n```\n"
    foot_bits = []
    if info.commit:
        foot_bits.append(f"commit `{info.commit[:12]}`")
    if info.run_url:
        foot_bits.append(f"[CI run]({info.run_url})")
    if info.artifact_url:
        foot_bits.append(f"[full plan diff]({info.artifact_url})")
    foot = "\n---\n<sub>" + " · ".join([*foot_bits, "updated on every push"]) + "</sub>\n"
    where = (f"the [full plan diff]({info.artifact_url})" if info.artifact_url
             else "the full plan diff in the CI run's artifacts")
    note = (f"> **Cut to fit this platform's {limit:,}-character comment limit**: "
            f"see {where}.\n")
    body, _ = trim(diff, limit - len(head) - len(foot), note)
    return head + body + foot
