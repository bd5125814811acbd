"""Whatever is sent, the agent answers a 4xx naming the problem, never a 500 or a traceback."""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

from daemon_helpers import AgentProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeshot.agent.server import ROUTES

METHODS = st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"])
SEGMENT = st.one_of(st.from_regex(r"\Azz[a-z0-9_.+-]{0,20}\Z"), st.text(max_size=30),
                    st.sampled_from(["..", ".", "%2e%2e", "a" * 300, "-x", "x y"]))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                              max_size=4),
    max_leaves=12)
FIELDS = ["appshot", "from_snapshot", "owner", "vendor", "lazy", "request_id", "spec", "name",
          "include_source", "pem", "tiers", "app", "version", "source_dir"]
NEAR_VALID = st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=5)


@st.composite
def requests(draw) -> tuple[str, str]:
    """(method, path): mostly a route's own method, with fuzzed segments and query."""
    method, template, _ = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(METHODS)
    path = template
    for key in ("{name}", "{id}"):
        if key in path:
            path = path.replace(key, quote(draw(SEGMENT), safe="") or "x")
    if draw(st.booleans()):
        q = draw(st.dictionaries(st.sampled_from(["after", "limit", "kind", "state", "app", "x"]),
                                 st.text(max_size=12), max_size=3))
        path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
    return method, path


@st.composite
def bodies(draw) -> bytes | None:
    kind = draw(st.sampled_from(["none", "bytes", "json", "near"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    value = draw(JSONISH if kind == "json" else NEAR_VALID)
    return json.dumps(value).encode()


HEADERS = st.dictionaries(
    st.sampled_from(["Upload-Offset", "Upload-Length", "Upload-SHA256", "Content-Type",
                     "Range"]),
    st.one_of(st.from_regex(r"\A[0-9]{1,22}\Z"), st.from_regex(r"\A[0-9a-f]{64}\Z"),
              st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)),
    max_size=4)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests(), body=bodies(), headers=HEADERS,
       who=st.sampled_from(["ctl", "ctl", "edge", "op", "none"]))
def test_fuzzed_requests_never_get_a_500(daemon: AgentProcess, req, body, headers, who):
    method, path = req
    token = None if who == "none" else getattr(daemon.tokens, who)
    status, answer = daemon.http(method, path, token=token, body=body, headers=headers,
                                 timeout=30)
    assert status < 500 or status in (502, 503, 507), (method, path, status, answer)
    if status >= 400 and method != "HEAD":
        assert isinstance(answer, dict) and answer.get("error"), (status, answer)
        assert "Traceback" not in json.dumps(answer)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(lambda m, p, h, b: f"{m} {p} HTTP/1.1\r\n{h}\r\n\r\n".encode() + b,
              st.text(max_size=10), st.text(max_size=40),
              st.text(max_size=80), st.binary(max_size=50))))
def test_malformed_http_never_gets_a_500(daemon: AgentProcess, raw: bytes):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        try:
            s.sendall(raw.replace(b"\n", b"\r\n") if b"\r" not in raw else raw)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError, BrokenPipeError):
            return
    assert b" 500 " not in data.split(b"\r\n", 1)[0]
    assert b"Traceback" not in data


def test_the_agent_survived_the_fuzzing(daemon: AgentProcess):
    status, body = daemon.http("GET", "/v1/health", token=daemon.tokens.op)
    assert status == 200 and body["status"] == "ok"
    assert "unexpected error" not in daemon.log_text()
