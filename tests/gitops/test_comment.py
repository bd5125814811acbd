"""The plan comment itself: outcome, marker, trimming past the platform's limit (pure)."""

from __future__ import annotations

import re

import pytest

from edgeshot.gitops import LIMITS, CommentInput, build, has_marker, marker, outcome_of, trim


@pytest.mark.parametrize("rc, outcome", [(0, "no-changes"), (2, "changes"), (1, "error"),
                                         (130, "error"), (-9, "error")])
def test_outcome_follows_plan_diff_exit_codes(rc, outcome):
    assert outcome_of(rc) == outcome


@pytest.mark.parametrize("key, expected", [
    ("policy.py", "<!-- edgeshot-plan-comment key=policy.py -->"),
    ("networks/eu/policy.py", "<!-- edgeshot-plan-comment key=networks/eu/policy.py -->"),
    ("my policy -->.py", "<!-- edgeshot-plan-comment key=my_policy_--_.py -->"),
    ("", "<!-- edgeshot-plan-comment key=default -->"),
])
def test_marker_is_one_html_comment_per_policy_file(key, expected):
    assert marker(key) == expected
    assert marker(key).count("-->") == 1


@pytest.mark.parametrize("body, key, found", [
    ("<!-- edgeshot-plan-comment key=policy.py -->\n### plan", "policy.py", True),
    ("\n<!-- edgeshot-plan-comment key=policy.py -->\n", "policy.py", True),
    ("<!-- edgeshot-plan-comment key=policy.py -->", "other.py", False),
    ("<!-- edgeshot-plan-comment key=policy.pyc -->", "policy.py", False),
    ("> quoting <!-- edgeshot-plan-comment key=policy.py -->", "policy.py", False),
    (None, "policy.py", False),
    ("", "policy.py", False),
])
def test_has_marker(body, key, found):
    assert has_marker(body, key) is found


def _diff(n: int) -> str:
    """A plan diff shaped as render_diff_markdown writes it: nested <details>, tables."""
    parts = ["### edgeshot plan: `acme`\n\n**n changes**\n\n",
             f"<details><summary>Servers ({n})</summary>\n\n"]
    for i in range(n):
        parts.append(f"<details><summary><code>~ server s-{i}</code></summary>\n\n"
                     "| field | before | after |\n|---|---|---|\n"
                     f"| `server_type` | cx22 | cx3{i % 10} |\n</details>\n")
    parts.append("</details>\n")
    return "".join(parts)


def _balanced(text: str) -> bool:
    return (len(re.findall(r"<details\b", text)) == len(re.findall(r"</details>", text))
            and text.count("```") % 2 == 0)


@pytest.mark.parametrize("text, budget, cut", [
    ("short\n", 100, False),
    ("x" * 100, 100, False),
    (_diff(3), len(_diff(3)), False),
    (_diff(400), 2000, True),
    (_diff(400), 500, True),
    ("```\n" + "line\n" * 500 + "```\n", 300, True),
])
def test_trim_fits_the_budget_and_closes_what_it_opened(text, budget, cut):
    note = "> cut: see the full diff\n"
    got, was_cut = trim(text, budget, note)
    assert was_cut is cut
    assert len(got) <= budget
    if cut:
        assert got.endswith(note)
        assert _balanced(got)
        kept = got[:-len(note)]
        first_line = text.splitlines(keepends=True)[0]
        assert kept.startswith(first_line)  # cut at a line, from the top
    else:
        assert got == text


def test_trim_refuses_a_budget_below_its_note():
    with pytest.raises(ValueError, match="cannot hold the note"):
        trim("x" * 50, 10, "a note longer than ten characters")


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_huge_diff_is_cut_to_the_platform_limit_with_a_link(platform):
    limit = LIMITS[platform]
    big = _diff(30_000 if platform == "gitlab" else 3_000)
    assert len(big) > limit
    url = "https://ci.example/artifacts/plan-diff.md"
    body = build(big, CommentInput("policy.py", "changes", commit="0123456789abcdef",
                                   artifact_url=url, run_url="https://ci.example/run/7"), limit)
    assert len(body) <= limit
    assert len(body) > limit - 2000  # not needlessly short
    assert body.startswith(marker("policy.py") + "\n### edgeshot plan: `acme`")
    assert f"{limit:,}-character comment limit" in body
    assert f"[full plan diff]({url})" in body
    assert "commit `0123456789ab`" in body and "[CI run](https://ci.example/run/7)" in body
    assert _balanced(body)


def test_a_small_diff_is_kept_whole():
    d = _diff(2)
    body = build(d, CommentInput("policy.py", "changes"), LIMITS["github"])
    assert d in body
    assert "comment limit" not in body


def test_a_failed_plan_shows_its_errors_in_a_code_block():
    errors = "policy.py:12: network.edgepoints[0].location: 'xxx1' is not a Hetzner location\n"
    body = build(errors + "```injected\n", CommentInput("policy.py", "error"), LIMITS["github"])
    assert "### edgeshot plan failed for `policy.py`" in body
    assert "```\n" + errors in body
    assert body.count("```") == 2  # the error text cannot close the block early
