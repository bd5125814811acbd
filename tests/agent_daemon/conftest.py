"""Fixtures: a real agent daemon over real HTTP (as root: slots, CRIU; else cold starts).

Each agent gets its own state dir, slot prefix and subnet; teardown stops it and
everything it started, and fails if anything (process, netns, link) was left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import AgentProcess, Tokens, hello_spec, make_agent

from edgeshot.agent._sys import reap, set_subreaper


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return Tokens.make(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> Iterator[None]:
    # pods of a SIGKILLed agent are re-parented here: collect them when they exit
    set_subreaper()
    yield
    reap()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[AgentProcess]:
    """The session's agent (restores with CRIU as root; cold-starts otherwise)."""
    a = make_agent(tmp_path_factory.mktemp("agent"), tokens)
    a.start()
    yield a
    leftovers = a.teardown()
    a.remove()
    assert not leftovers, f"left behind: {leftovers}"


@pytest.fixture
def fresh_agent(tmp_path: Path, tokens: Tokens) -> Iterator[AgentProcess]:
    """An agent of its own for one test (restarts, kills), started by the test."""
    a = make_agent(tmp_path / "agent", tokens)
    yield a
    leftovers = a.teardown()
    assert not leftovers, f"left behind: {leftovers}\n{a.log_text()[-3000:]}"


@pytest.fixture(scope="session")
def hello_shot(daemon: AgentProcess) -> str:
    """The hello app captured once through the API: the appshot's name."""
    status, body = daemon.http("POST", "/v1/capture", token=daemon.tokens.ctl,
                               body={"spec": hello_spec().model_dump(mode="json"),
                                     "name": "hello-1.0"})
    assert status == 201, body
    return "hello-1.0"
