"""The CI files of examples/gitops/: valid for their platform (the JSON schemas GitHub
Actions and GitLab CI files are checked against, vendored by check-jsonschema: no network),
and every edgeshot command and option they run exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from edgeshot.cli import app

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
GITHUB = GITOPS / "github" / "edgeshot.yml"
GITLAB = GITOPS / "gitlab" / ".gitlab-ci.yml"
SCHEMAS = {GITHUB: "vendor.github-workflows", GITLAB: "vendor.gitlab-ci"}


def check_jsonschema(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    extra = ["--data-transform", "gitlab-ci"] if "gitlab" in schema else []
    return subprocess.run([str(tool), "--builtin-schema", schema, *extra, "--color", "never",
                           str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_workflow_matches_its_platform_schema(path):
    result = check_jsonschema(path, SCHEMAS[path])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path, breakage", [
    (GITHUB, lambda d: d["jobs"]["plan"].pop("runs-on")),
    (GITHUB, lambda d: d["jobs"]["deploy"]["steps"].append({"uses": 3})),
    (GITLAB, lambda d: d["edgeshot-plan"].update(when="sometimes")),
    (GITLAB, lambda d: d["edgeshot-deploy"].update(script={"not": "a list"})),
], ids=["github-no-runs-on", "github-bad-step", "gitlab-bad-when", "gitlab-bad-script"])
def test_the_schema_check_catches_a_broken_file(path, breakage, tmp_path):
    data = yaml.safe_load(path.read_text())
    breakage(data)
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(data))
    assert check_jsonschema(broken, SCHEMAS[path]).returncode != 0


def _scripts(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    if path == GITHUB:
        return [s["run"] for job in data["jobs"].values() for s in job["steps"] if "run" in s]
    return [line for job in data.values() if isinstance(job, dict)
            for key in ("before_script", "script") for line in job.get(key, [])]


def _edgeshot_calls(path: Path) -> list[list[str]]:
    calls = []
    for script in _scripts(path):
        text = re.sub(r"\$\{\{[^}]*\}\}", "X", script)  # GitHub expressions
        text = re.sub(r"\\\n|\n(?=\s*--)", " ", text)
        for line in text.splitlines():
            for part in re.split(r"&&|\|\||;|\bthen\b|\bif\b", line):
                words = shlex.split(part.replace(">", " > ").split(">")[0], posix=True)
                if words and words[0] == "edgeshot":
                    calls.append(words[1:])
    return calls


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_edgeshot_command_and_option_exists(path):
    calls = _edgeshot_calls(path)
    used = {c[0] if c[0] != "gitops" else " ".join(c[:2]) for c in calls}
    assert {"plan", "gitops comment", "up", "deploy"} <= used
    root = typer.main.get_command(app)
    for call in calls:
        cmd = root
        args = list(call)
        while hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            cmd = cmd.commands[args.pop(0)]
        options = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        for word in args:
            if word.startswith("--"):
                assert word in options, f"{path.name}: edgeshot {' '.join(call)}: {word}?"


def test_readme_names_every_secret_and_variable_the_workflows_read():
    readme = (GITOPS / "README.md").read_text()
    github = GITHUB.read_text()
    names = set(re.findall(r"\$\{\{\s*(?:secrets|vars)\.([A-Z_]+)", github))
    assert {"PULUMI_CONFIG_PASSPHRASE", "HCLOUD_TOKEN", "EDGESHOT_SSH_PRIVATE_KEY"} <= names
    gitlab = GITLAB.read_text()
    names |= {n for n in re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", gitlab)
              if not n.startswith(("CI_", "GITLAB_CI", "HOME", "PATH"))} - {"POLICY", "NO_COLOR"}
    for name in sorted(names):
        assert f"`{name}`" in readme, name
