"""Tokens: the scheme (unit), and every endpoint of a real agent behind it (401/403)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from daemon_helpers import AgentProcess

from edgeshot.agent import auth
from edgeshot.agent.server import ROUTES, AgentServer

# -- the scheme ----------------------------------------------------------------------


def test_tokens_are_random_256_bit_and_only_their_hash_is_stored(tmp_path: Path):
    f = tmp_path / "tokens.toml"
    t1 = auth.issue_token(f, "a", ["edge-agent"])
    t2 = auth.issue_token(f, "b", ["owner:acme", "vendor:acme-isv"])
    assert t1 != t2 and t1.startswith("est1_") and len(t1) == 5 + 43
    text = f.read_text()
    assert t1 not in text and t2 not in text
    assert hashlib.sha256(t1.encode()).hexdigest() in text
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    store = auth.TokenStore.from_file(f)
    assert store.authenticate(t1) == auth.Principal("a", frozenset({"edge-agent"}))
    p = store.authorization(f"Bearer {t2}")
    assert p is not None and p.owners == {"acme"} and p.vendors == {"acme-isv"}
    assert p.may_see(owner="acme") and not p.may_see(owner="other")
    assert p.may_see(vendor="acme-isv") and not p.is_operator


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "bearer x",
                                    "Bearer " + "x" * 5000, "Bearer est1_" + "A" * 43])
def test_bad_or_unknown_tokens_authenticate_nobody(tmp_path: Path, header):
    f = tmp_path / "t.toml"
    auth.issue_token(f, "a", ["operator"])
    assert auth.TokenStore.from_file(f).authorization(header) is None


@pytest.mark.parametrize("held,wanted,ok", [
    ("operator", "operator", True),
    ("owner:acme", "owner:*", True),
    ("owner:acme", "owner:acme", True),
    ("owner:acme", "owner:other", False),
    ("vendor:x", "owner:*", False),
    ("edge-agent", "controller-agent", False),
    ("controller-edge", "edge-agent", False),
])
def test_scope_matching(held, wanted, ok):
    assert auth.scope_matches(held, wanted) is ok


@pytest.mark.parametrize("scope", ["admin", "owner:", "owner:a b", "vendor:*", "root", ""])
def test_unknown_scopes_are_refused(tmp_path: Path, scope):
    with pytest.raises(ValueError, match="scope"):
        auth.issue_token(tmp_path / "t.toml", "x", [scope])


def test_token_file_problems_are_named(tmp_path: Path):
    f = tmp_path / "t.toml"
    f.write_text('[[token]]\nname = "a"\nsha256 = "nothex"\nscopes = ["operator"]\n')
    f.chmod(0o600)
    with pytest.raises(auth.AuthError, match="token #1 .a.: sha256"):
        auth.TokenStore.from_file(f)
    f.write_text('[[token]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = ["operator"]\n'
                 '[[token]]\nname = "a"\nsha256 = "' + "1" * 64 + '"\nscopes = ["operator"]\n')
    with pytest.raises(auth.AuthError, match="appears twice"):
        auth.TokenStore.from_file(f)
    f.write_text("[[token]\n")
    with pytest.raises(auth.AuthError, match="not valid TOML"):
        auth.TokenStore.from_file(f)
    auth.issue_token(f.with_name("ok.toml"), "a", ["operator"])
    f.with_name("ok.toml").chmod(0o666)
    with pytest.raises(auth.AuthError, match="writable by group/others"):
        auth.TokenStore.from_file(f.with_name("ok.toml"))


def test_store_reloads_a_changed_file_and_keeps_old_tokens_on_a_broken_one(tmp_path: Path):
    f = tmp_path / "t.toml"
    old = auth.issue_token(f, "a", ["operator"])
    store = auth.TokenStore.from_file(f)
    new = auth.issue_token(f, "b", ["edge-agent"])
    store._checked = 0
    assert store.authenticate(new) is not None
    f.write_text("garbage = [")
    store._checked = 0
    assert store.authenticate(old) is not None  # a broken edit does not lock everyone out


def test_secret_files_must_be_private(tmp_path: Path):
    p = tmp_path / "tok"
    auth.write_secret(p, "est1_abc")
    assert auth.read_secret(p) == "est1_abc"
    os.chmod(p, 0o644)
    with pytest.raises(auth.AuthError, match="chmod 600"):
        auth.read_secret(p)


def test_every_handler_declares_its_scopes():
    for method, path, name in ROUTES:
        scopes = getattr(getattr(AgentServer, name), auth.SCOPES_ATTR, False)
        assert scopes, f"{method} {path} declares no scopes"
        assert "owner:*" not in scopes and "vendor:*" not in scopes  # agents serve infra only


# -- a real agent --------------------------------------------------------------------


def _concrete(path: str) -> str:
    return path.replace("{name}", "nothing-here").replace("{id}", "nothing-here")


def test_every_endpoint_needs_a_token_and_its_scope(daemon: AgentProcess):
    t = daemon.tokens
    by_name = {"controller-agent": t.ctl, "edge-agent": t.edge, "operator": t.op,
               "metrics": t.metrics}  # metrics: /metrics only, read-only
    for method, path, name in ROUTES:
        url = _concrete(path)
        scopes = getattr(getattr(AgentServer, name), auth.SCOPES_ATTR)
        status, body = daemon.http(method, url)
        assert status == 401, (method, path, status, body)
        assert body["code"] == "unauthorized"
        status, _ = daemon.http(method, url, token="est1_" + "B" * 43)
        assert status == 401, (method, path)
        for token in (t.owner, t.vendor, *(v for k, v in by_name.items() if k not in scopes)):
            status, body = daemon.http(method, url, token=token)
            assert status == 403, (method, path, status, body)
            assert "lacks a scope" in body["error"]
        for scope in scopes:
            status, body = daemon.http(method, url, token=by_name[scope],
                                       body=b"" if method in ("POST", "PATCH") else None)
            assert status not in (401, 403, 500), (method, path, scope, status, body)
    # an unknown route reveals nothing without a token, and is a 404 with one
    assert daemon.http("GET", "/v2/secret")[0] == 401
    assert daemon.http("GET", "/v2/secret", token=t.op)[0] == 404


def test_tokens_never_reach_the_log(daemon: AgentProcess):
    t = daemon.tokens
    wrong = "est1_" + "C" * 43
    for token in [*t.all(), wrong]:
        daemon.http("GET", "/v1/capture", token=token)
        daemon.http("POST", "/v1/capture", token=token, body={"spec": 1})
    time.sleep(0.2)
    log = daemon.log_text()
    assert "403 POST /v1/capture for token 'owner-acme'" in log  # logged by name
    assert "401 POST /v1/capture" in log
    for token in [*t.all(), wrong]:
        assert token not in log
        assert token[5:25] not in log
