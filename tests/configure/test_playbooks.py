"""The playbooks themselves: lint-clean under ansible-lint's production profile, and the
content hash that makes `pulumi up` configure again when they change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from edgeshot.configure import playbooks_hash

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def test_ansible_lint_production_profile():
    """Plain `ansible-lint` at the top of the repository: its .ansible-lint asks for the
    production profile, offline, and leaves out everything that is not Ansible."""
    lint = Path(sys.executable).parent / "ansible-lint"
    proc = subprocess.run(
        [str(lint), "--nocolor"],
        capture_output=True, text=True, timeout=240, cwd=PLAYBOOKS.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout
    assert "galaxy.yml" not in proc.stdout  # the collection's metadata passes too


def test_site_yml_includes_every_role():
    site = (PLAYBOOKS / "site.yml").read_text()
    for role in ("criu", "haproxy", "edge_agent", "appshot", "controller"):
        assert f"name: {role}\n" in site
        for part in ("tasks", "defaults", "meta", "handlers"):
            assert (PLAYBOOKS / "roles" / role / part / "main.yml").is_file(), (role, part)


def test_playbooks_hash_follows_content(tmp_path):
    copy = tmp_path / "playbooks"
    shutil.copytree(PLAYBOOKS, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = playbooks_hash(copy)
    assert h == playbooks_hash(PLAYBOOKS) == playbooks_hash(copy)
    (copy / "roles" / "haproxy" / "__pycache__").mkdir()
    (copy / "roles" / "haproxy" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert playbooks_hash(copy) == h  # byte-code caches are not content
    defaults = copy / "roles" / "haproxy" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text() + "# a change\n")
    assert playbooks_hash(copy) != h
    defaults.rename(copy / "roles" / "haproxy" / "defaults" / "other.yml")
    assert playbooks_hash(copy) not in (h,)  # a rename is a change too
