"""Find-and-update of the plan comment over real HTTP (a local stand-in for GitHub's and
GitLab's REST endpoints), and `edgeshot gitops comment` end to end on a real plan diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeshot.cli import app
from edgeshot.gitops import ForgeError, Target, TargetError, marker, target_from_env, upsert

from .forge import Forge, ForgeServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghs_" + "t" * 36


def target(forge: Forge, token: str = TOKEN) -> Target:
    return Target(forge.platform, forge.url, forge.project, forge.number, token)


@pytest.fixture(params=["github", "gitlab"])
def forge(request):
    f = Forge(request.param, TOKEN, "acme/edge-policies" if request.param == "github"
              else "acme/platform/edge-policies", 42)
    with ForgeServer(f):
        yield f


async def test_one_comment_created_then_edited_in_place(forge):
    forge.add("LGTM")
    forge.add("> quoting " + marker("policy.py"))  # someone quoting it is not ours
    forge.add(marker("other/policy.py") + "\nanother network's plan")
    first = await upsert(target(forge), "policy.py", marker("policy.py") + "\nplan 1")
    assert first.action == "created"
    second = await upsert(target(forge), "policy.py", marker("policy.py") + "\nplan 2")
    assert (second.action, second.id) == ("updated", first.id)
    third = await upsert(target(forge), "policy.py", marker("policy.py") + "\nplan 2")
    assert (third.action, third.id) == ("unchanged", first.id)
    bodies = [c["body"] for c in forge.comments]
    assert bodies == ["LGTM", "> quoting " + marker("policy.py"),
                      marker("other/policy.py") + "\nanother network's plan",
                      marker("policy.py") + "\nplan 2"]
    assert second.url.endswith(f"/c/{first.id}")
    methods = [m for m, _, _ in forge.requests]
    assert methods.count("POST") == 1
    assert methods.count("PATCH" if forge.platform == "github" else "PUT") == 1


async def test_the_comment_is_found_past_the_first_page(forge):
    for i in range(150):
        forge.add(f"comment {i}")
    forge.add(marker("policy.py") + "\nold plan")
    got = await upsert(target(forge), "policy.py", marker("policy.py") + "\nnew plan")
    assert got.action == "updated"
    assert len(forge.comments) == 151
    pages = [p for m, p, _ in forge.requests if m == "GET"]
    assert len(pages) == 2 and "page=2" in pages[1] and "per_page=100" in pages[1]


async def test_each_platform_gets_its_own_auth_and_paths(forge):
    await upsert(target(forge), "policy.py", marker("policy.py") + "\nplan")
    _, path, headers = forge.requests[0]
    if forge.platform == "github":
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["Accept"] == "application/vnd.github+json"
        assert path.startswith("/repos/acme/edge-policies/issues/42/comments?")
    else:
        assert headers["PRIVATE-TOKEN"] == TOKEN and "Authorization" not in headers
        assert path.startswith("/projects/acme%2Fplatform%2Fedge-policies/merge_requests/42/notes?")


async def test_gitlab_system_notes_are_not_comments():
    f = Forge("gitlab", TOKEN, "7", 3)
    with ForgeServer(f):
        f.add(marker("policy.py") + "\nlooks like ours", system=True)
        got = await upsert(target(f), "policy.py", marker("policy.py") + "\nplan")
    assert got.action == "created"
    assert f.comments[0]["body"].endswith("looks like ours")


async def test_a_refused_token_is_a_clear_error_without_the_token(forge):
    wrong = "wrong-" + "x" * 30
    with pytest.raises(ForgeError) as caught:
        await upsert(target(forge, wrong), "policy.py", marker("policy.py"))
    assert caught.value.status == 401
    assert "Bad credentials" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(target(forge, wrong))
    assert forge.comments == []


async def test_nothing_listening_is_a_clear_error():
    f = Forge("github", TOKEN, "a/b", 1)
    with ForgeServer(f):
        url = f.url
    t = Target("github", url, "a/b", 1, TOKEN)
    with pytest.raises(ForgeError, match="unreachable"):
        await upsert(t, "policy.py", "x")


GITHUB_ENV = {"GITHUB_ACTIONS": "true", "GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "acme/p",
              "PR_NUMBER": "12", "GITHUB_RUN_ID": "99", "PR_HEAD_SHA": "abc123",
              "ARTIFACT_URL": "https://github.com/acme/p/actions/runs/99/artifacts/5"}
GITLAB_ENV = {"GITLAB_CI": "true", "GITLAB_TOKEN": "glpat-x", "CI_API_V4_URL":
              "https://gitlab.example/api/v4", "CI_PROJECT_ID": "7", "CI_MERGE_REQUEST_IID": "3",
              "CI_JOB_URL": "https://gitlab.example/acme/p/-/jobs/55", "CI_COMMIT_SHA": "def456"}


@pytest.mark.parametrize("env, platform, expected", [
    (GITHUB_ENV, None, dict(platform="github", api_url="https://api.github.com",
                            project="acme/p", number=12, commit="abc123",
                            run_url="https://github.com/acme/p/actions/runs/99",
                            artifact_url="https://github.com/acme/p/actions/runs/99/artifacts/5")),
    (GITLAB_ENV, None, dict(platform="gitlab", api_url="https://gitlab.example/api/v4",
                            project="7", number=3, commit="def456",
                            run_url="https://gitlab.example/acme/p/-/jobs/55",
                            artifact_url="https://gitlab.example/acme/p/-/jobs/55/artifacts/"
                                         "file/plan-diff.md")),
    ({**GITHUB_ENV, "GITHUB_API_URL": "https://ghe.example/api/v3"}, "github",
     dict(api_url="https://ghe.example/api/v3")),
])
def test_target_from_the_ci_environment(env, platform, expected):
    got = target_from_env(env, platform)
    for k, v in expected.items():
        assert getattr(got, k) == v, k
    assert got.token not in repr(got)


@pytest.mark.parametrize("env, platform, message", [
    ({}, None, "neither GITHUB_ACTIONS nor GITLAB_CI"),
    ({"GITHUB_ACTIONS": "true"}, None, "github: missing GITHUB_TOKEN, GITHUB_REPOSITORY, PR_NUMBER"),
    ({"GITLAB_CI": "true", "CI_API_V4_URL": "u", "CI_PROJECT_ID": "1"}, None,
     "gitlab: missing GITLAB_TOKEN, CI_MERGE_REQUEST_IID"),
    ({**GITHUB_ENV, "PR_NUMBER": "abc"}, "github", "number 'abc' is not a number"),
])
def test_target_errors_name_every_missing_variable(env, platform, message):
    with pytest.raises(TargetError, match=message):
        target_from_env(env, platform)


def _plan(tmp_path: Path, policy: Path, name: str) -> Path:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["plan", str(policy), "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    return out


def test_cli_posts_a_real_plan_diff_and_edits_it_on_the_next_push(tmp_path, monkeypatch):
    """The workflow's steps: plan the base, diff the head against it, comment; twice."""
    base = _plan(tmp_path, ROOT / "examples" / "shop" / "policy_hetzner.py", "base.json")
    head_policy = tmp_path / "policy.py"
    src = (ROOT / "examples" / "shop" / "policy_hetzner.py").read_text()
    head_policy.write_text(src)
    runner = CliRunner()
    f = Forge("github", TOKEN, "acme/p", 12)
    with ForgeServer(f) as url:
        for k, v in {**GITHUB_ENV, "GITHUB_API_URL": url}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.syspath_prepend(str(ROOT / "examples" / "shop"))
        diff = runner.invoke(app, ["plan", str(ROOT / "examples" / "shop" / "policy_hetzner.py"),
                                   "--diff", str(base), "--format", "markdown"])
        assert diff.exit_code == 0, diff.output  # same policy: no changes
        (tmp_path / "plan-diff.md").write_text(diff.stdout)
        first = runner.invoke(app, ["gitops", "comment", str(tmp_path / "plan-diff.md"),
                                    "--exit-code", "0", "--key", "policy.py"])
        assert first.exit_code == 0, first.output
        assert "created plan comment" in first.output
        body = f.comments[0]["body"]
        assert body.startswith(marker("policy.py"))
        assert "No changes" in body and "commit `abc123`" in body

        changed = base.read_text().replace('"cx22"', '"cx32"')
        assert changed != base.read_text()
        (tmp_path / "old.json").write_text(changed)
        diff = runner.invoke(app, ["plan", str(ROOT / "examples" / "shop" / "policy_hetzner.py"),
                                   "--diff", str(tmp_path / "old.json"), "--format", "markdown"])
        assert diff.exit_code == 2, diff.output
        (tmp_path / "plan-diff.md").write_text(diff.stdout)
        second = runner.invoke(app, ["gitops", "comment", str(tmp_path / "plan-diff.md"),
                                     "--exit-code", "2", "--key", "policy.py"])
        assert second.exit_code == 0, second.output
        assert "updated plan comment" in second.output
    assert len(f.comments) == 1
    assert "server_type" in f.comments[0]["body"] and "cx32" in f.comments[0]["body"]


def test_cli_errors_are_one_clear_line(tmp_path, monkeypatch):
    for k in ("GITHUB_ACTIONS", "GITLAB_CI"):
        monkeypatch.delenv(k, raising=False)
    runner = CliRunner()
    missing = runner.invoke(app, ["gitops", "comment", str(tmp_path / "nope.md"),
                                  "--exit-code", "0", "--key", "p.py"])
    assert missing.exit_code == 1
    assert "nope.md: cannot read the plan diff" in " ".join(missing.output.split())
    (tmp_path / "d.md").write_text("diff\n")
    nowhere = runner.invoke(app, ["gitops", "comment", str(tmp_path / "d.md"),
                                  "--exit-code", "0", "--key", "p.py"])
    assert nowhere.exit_code == 1
    assert "pass --platform github|gitlab" in " ".join(nowhere.output.split())
    dry = runner.invoke(app, ["gitops", "comment", str(tmp_path / "d.md"), "--exit-code", "2",
                              "--key", "p.py", "--dry-run"])
    assert dry.exit_code == 0
    assert dry.stdout.startswith(marker("p.py") + "\ndiff\n")


def test_cli_reports_a_refused_post(tmp_path, monkeypatch):
    f = Forge("gitlab", "right-token", "7", 3)
    (tmp_path / "plan-diff.md").write_text("x\n")
    with ForgeServer(f) as url:
        for k, v in {**GITLAB_ENV, "CI_API_V4_URL": url}.items():
            monkeypatch.setenv(k, v)
        got = CliRunner().invoke(app, ["gitops", "comment", str(tmp_path / "plan-diff.md"),
                                       "--exit-code", "0", "--key", "policy.py"])
    assert got.exit_code == 1
    text = " ".join(got.output.split())
    assert "gitlab: cannot post the plan comment: 401" in text
    assert "glpat-x" not in text
    assert json.dumps(f.comments) == "[]"
