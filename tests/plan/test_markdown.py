"""Markdown for pull-request comments, compared with golden files.

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/plan/test_markdown.py   # rewrite tests/plan/golden/

Any difference from a golden file fails, with a unified diff in the message.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from edgeshot.plan import compile_plan, diff, render_diff_markdown, render_plan_markdown
from edgeshot.spec import Pricing

from .builders import ASH, FSN, HEL, NBG, PRICING, app, network, spec, tier

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; run with UPDATE_GOLDEN=1 to write it")
    expected = path.read_text()
    if text != expected:
        delta = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"golden/{name}", tofile="rendered"))
        pytest.fail(f"markdown differs from golden/{name} (UPDATE_GOLDEN=1 rewrites it):\n{delta}")


def old_spec():
    return spec(network(), app("shop", distribution={"max": 2, "global_max": 5}),
                app("blog", distribution={"regions": ("eu-central",)}))


def new_spec():
    """A release: a new edgepoint, shop 1.1.0 with a new setting, blog retired, dearer traffic."""
    return spec(
        network(edgepoints=(FSN, HEL, ASH, NBG),
                pricing=Pricing(**(PRICING | {"network_gb": "0.02"}))),
        app("shop", version="1.1.0", distribution={"max": 2, "global_max": 5},
            tiers=(tier(env={"BANNER": "sale | 20% off"}),)),
    )


def test_whole_plan_golden():
    check_golden("plan.md", render_plan_markdown(compile_plan(old_spec())))


def test_diff_golden():
    changes = diff(compile_plan(old_spec()), compile_plan(new_spec()))
    check_golden("diff.md", render_diff_markdown(changes, "demo"))


def test_no_change_golden():
    p = compile_plan(old_spec())
    check_golden("diff_empty.md", render_diff_markdown(diff(p, p), p.network))


def test_diff_markdown_structure():
    changes = diff(compile_plan(old_spec()), compile_plan(new_spec()))
    text = render_diff_markdown(changes, "demo")
    assert text.startswith("### edgeshot plan: `demo`\n\n**" + changes.summary() + "**\n")
    # every change has its own collapsible block, signed by its action
    for c in changes.changes:
        sign = {"add": "+", "change": "~", "remove": "-"}[c.action]
        assert f"<summary><code>{sign} {c.kind} {c.id}</code>" in text
    assert text.count("<details>") == text.count("</details>")
    # a '|' inside a value does not break the table row
    assert r"`sale \| 20% off`" in text
    assert "Cost changes" in text and "server nbg-1 | +3.79 EUR" in text
    assert text.endswith("</details>\n")


def test_plan_markdown_lists_every_server_and_app():
    p = compile_plan(old_spec())
    text = render_plan_markdown(p)
    for s in (p.controller, *p.servers):
        assert f"| `{s.name}` |" in text
    for a in p.apps:
        assert f"| `{a.name}` | {a.version} |" in text
    assert text.count("<details>") == text.count("</details>") == 2
