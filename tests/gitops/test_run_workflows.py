"""The CI files run: the GitHub plan job's steps and the GitLab plan job's script, in bash
as the runners run them, on a real repository with a base and a head, against the local
stand-in for the platform's REST API. The runner's own actions (checkout, setup-python,
upload-artifact) and installing edgeshot are played by the test; every `run:` is the file's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeshot.gitops import marker

from .forge import Forge, ForgeServer

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"
GITHUB = ROOT / "examples" / "gitops" / "github" / "edgeshot.yml"
GITLAB = ROOT / "examples" / "gitops" / "gitlab" / ".gitlab-ci.yml"
POLICY = "policy_hetzner.py"
TOKEN = "ghs_" + "w" * 36


def _base_env(tmp: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    return env


def _shop(dest: Path, server_type: str | None = None, broken: bool = False) -> None:
    shutil.copytree(SHOP, dest, ignore=shutil.ignore_patterns("__pycache__", ".state",
                                                               ".edgeshot"))
    policy = dest / POLICY
    text = policy.read_text()
    if server_type:
        text = text.replace('location="hel1", server_type="cx22"',
                            f'location="hel1", server_type="{server_type}"')
    if broken:
        text = text.replace('location="hel1"', 'location="nowhere1"')
    policy.write_text(text)


class GitHubJob:
    """Just enough of a GitHub Actions runner for the plan job: expressions from the
    contexts, step outputs through $GITHUB_OUTPUT, `if:` on steps, bash -eo pipefail."""

    def __init__(self, work: Path, context: dict, env: dict[str, str]) -> None:
        self.work, self.context, self.env = work, context, env
        self.outputs: dict[str, dict[str, str]] = {}

    def _lookup(self, path: str) -> str:
        if path.startswith("'") and path.endswith("'"):
            return path[1:-1]
        node: object = {**self.context, "steps": {k: {"outputs": v}
                                                  for k, v in self.outputs.items()}}
        for part in path.split("."):
            node = node.get(part, "") if isinstance(node, dict) else ""
        return "" if node is None else str(node)

    def expr(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            for operand in m.group(1).split("||"):
                value = self._lookup(operand.strip())
                if value:
                    return value
            return ""
        return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", one, text)

    def condition(self, text: str) -> bool:
        py = re.sub(r"steps\.(\w+)\.outputs\.([\w-]+)",
                    lambda m: repr(self.outputs.get(m.group(1), {}).get(m.group(2), "")), text)
        return bool(eval(py.replace("&&", " and ").replace("||", " or "), {}))  # noqa: S307

    def run(self, workflow: dict, job: str, played: dict) -> tuple[int, str]:
        spec = workflow["jobs"][job]
        env = {**self.env, **{k: self.expr(str(v)) for k, v in workflow["env"].items()}}
        log = []
        for step in spec["steps"]:
            name = step.get("name", step.get("uses", ""))
            if "if" in step and not self.condition(step["if"]):
                continue
            if "uses" in step or name in played:
                out = played[name if name in played else step["uses"]](step) or {}
                if "id" in step:
                    self.outputs[step["id"]] = out
                continue
            out_file = self.work / f"output-{len(log)}"
            out_file.write_text("")
            step_env = {**env, **{k: self.expr(str(v)) for k, v in step.get("env", {}).items()},
                        "GITHUB_OUTPUT": str(out_file)}
            p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                                self.expr(step["run"])], cwd=self.work, env=step_env,
                               capture_output=True, text=True, timeout=300)
            log.append(f"## {name}\n{p.stdout}{p.stderr}")
            if "id" in step:
                self.outputs[step["id"]] = dict(
                    line.split("=", 1) for line in out_file.read_text().splitlines() if line)
            if p.returncode:
                return p.returncode, "\n".join(log)
        return 0, "\n".join(log)


def _github_run(tmp: Path, forge: Forge, url: str, head: dict, push: int) -> tuple[int, str]:
    work = tmp / f"run-{push}"
    work.mkdir()
    workflow = yaml.safe_load(GITHUB.read_text())
    context = {
        "vars": {"EDGESHOT_POLICY": POLICY}, "github": {
            "token": TOKEN, "event_name": "pull_request",
            "event": {"pull_request": {"number": 7, "base": {"sha": "b" * 40},
                                       "head": {"sha": str(push) * 40}}}}}
    env = {**_base_env(tmp), "GITHUB_ACTIONS": "true", "GITHUB_API_URL": url,
           "GITHUB_REPOSITORY": "acme/edge", "GITHUB_RUN_ID": str(100 + push),
           "GITHUB_SERVER_URL": "https://github.example"}

    def checkout(step: dict) -> None:
        where = step["with"]["path"]
        _shop(work / where, **(head if where == "head" else {}))

    played = {"actions/checkout@v4": checkout, "actions/setup-python@v5": lambda s: None,
              "Install edgeshot": lambda s: None,
              "Keep the full diff": lambda s: {"artifact-url": f"https://github.example/acme/"
                                                               f"edge/artifacts/{push}"}}
    return GitHubJob(work, context, env).run(workflow, "plan", played)


def test_github_plan_job_comments_once_and_edits_on_each_push(tmp_path):
    forge = Forge("github", TOKEN, "acme/edge", 7)
    forge.add("a reviewer's comment")
    with ForgeServer(forge) as url:
        rc, log = _github_run(tmp_path, forge, url, {"server_type": "cx32"}, 1)
        assert rc == 0, log
        assert len(forge.comments) == 2
        body = forge.comments[1]["body"]
        assert body.startswith(marker(POLICY))
        assert "cx32" in body and "server_type" in body
        assert "commit `" + "1" * 12 + "`" in body
        assert "[full plan diff](https://github.example/acme/edge/artifacts/1)" in body
        assert "[CI run](https://github.example/acme/edge/actions/runs/101)" in body

        rc, log = _github_run(tmp_path, forge, url, {"server_type": "cx42"}, 2)
        assert rc == 0, log
        assert len(forge.comments) == 2  # edited, not added
        assert "cx42" in forge.comments[1]["body"] and "cx32" not in forge.comments[1]["body"]

        rc, log = _github_run(tmp_path, forge, url, {"broken": True}, 3)
        assert rc == 1, log  # the check fails...
        body = forge.comments[1]["body"]  # ...and the comment says why
        assert "edgeshot plan failed" in body and "nowhere1" in body
    assert forge.comments[0]["body"] == "a reviewer's comment"


@pytest.mark.git
def test_gitlab_plan_job_on_a_real_repository(tmp_path):
    """The job's script as GitLab's runner runs it (each line in one shell, -e), in a clone
    whose origin has the target branch; the image's own `apt-get` line is left out."""
    env = {**_base_env(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig")}

    def git(*args: str, cwd: Path) -> str:
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    origin = tmp_path / "origin"
    _shop(origin)
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-qm", "base", cwd=origin)
    base_sha = git("rev-parse", "HEAD", cwd=origin)
    clone = tmp_path / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    policy = clone / POLICY
    policy.write_text(policy.read_text().replace('location="hel1", server_type="cx22"',
                                                 'location="hel1", server_type="cx32"'))
    git("commit", "-qam", "bigger hel", cwd=clone)

    job = yaml.safe_load(GITLAB.read_text())
    script = [line for line in job["edgeshot-plan"]["script"] if not line.startswith("apt-get")]
    forge = Forge("gitlab", "glpat-" + "x" * 20, "42", 5)
    with ForgeServer(forge) as url:
        run_env = {**env, **{k: str(v) for k, v in job["variables"].items()},
                   "POLICY": POLICY, "GITLAB_CI": "true", "CI_API_V4_URL": url,
                   "CI_PROJECT_ID": "42", "CI_MERGE_REQUEST_IID": "5",
                   "CI_MERGE_REQUEST_DIFF_BASE_SHA": base_sha, "GITLAB_TOKEN": forge.token,
                   "CI_JOB_URL": "https://gitlab.example/acme/edge/-/jobs/9",
                   "CI_COMMIT_SHA": git("rev-parse", "HEAD", cwd=clone)}
        p = subprocess.run(["bash", "-e", "-c", "\n".join(script)], cwd=clone, env=run_env,
                           capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (note,) = forge.comments
    assert note["body"].startswith(marker(POLICY))
    assert "cx32" in note["body"]
    assert ("[full plan diff](https://gitlab.example/acme/edge/-/jobs/9/artifacts/file/"
            "plan-diff.md)") in note["body"]
    assert (clone / "plan-diff.md").is_file()  # the artifact the job keeps
    git("worktree", "remove", "--force", str(tmp_path / "base"), cwd=clone)
