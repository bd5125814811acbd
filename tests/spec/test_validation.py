"""Every validation rule and its message, with the file and line a reviewer would look at.

The broken policy files in `broken/` say what they expect on the very line
where each failing object is written:

    Tier(name="web", ports=8001),  # expect: .ports | unknown field

`# expect: PATH | MESSAGE [| VALUE]` (several per line allowed) expects one
problem on that line whose field path contains PATH and whose message (and
value, when given) contains MESSAGE (VALUE); `# expect-file: ...` expects one
on line 0, a problem about the file as a whole. A load must report every
expected problem at once, and nothing else.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeshot.spec import (
    SLA,
    Budget,
    Cleave,
    Distribution,
    EdgeNetwork,
    HealthCheck,
    LoadTest,
    Money,
    Owner,
    PassCriteria,
    PeakWindow,
    Pricing,
    Problem,
    Resources,
    Route,
    Routing,
    Spec,
    SpecError,
    Tier,
    WarmupRequest,
    instance_month,
    load,
    select_edgepoints,
)
from edgeshot.spec._routes import (
    check_method,
    check_path,
    is_glob,
    methods_meet,
    parse_route,
    patterns_meet,
    specificity,
    to_regex,
)

from .conftest import HETZNER, policy_text, write_policy

BROKEN = Path(__file__).parent / "broken"
BROKEN_FILES = sorted(BROKEN.glob("*.py"))

# --- expectations written in the broken files ---------------------------------

_CLAUSE = re.compile(r"#\s*expect(-file)?:(.*?)(?=#\s*expect(?:-file)?:|$)")


@dataclass(frozen=True)
class Expect:
    line: int
    path: str
    message: str
    value: str | None = None

    def matches(self, p: Problem) -> bool:
        return (
            p.line == self.line
            and self.path in p.path
            and self.message in p.message
            and (self.value is None or (p.value is not None and self.value in p.value))
        )

    def __str__(self) -> str:
        value = f" | {self.value}" if self.value is not None else ""
        return f"line {self.line}: {self.path} | {self.message}{value}"


def expectations(path: Path) -> list[Expect]:
    out = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        for whole_file, clause in _CLAUSE.findall(text):
            parts = [p.strip() for p in clause.split("|")]
            assert len(parts) in (2, 3), f"{path.name}:{number}: bad marker {clause!r}"
            out.append(Expect(0 if whole_file else number, *parts))
    return out


def match(expected: list[Expect], problems: list[Problem]) -> tuple[list[Expect], list[Problem]]:
    """A one-to-one matching (augmenting paths); return what is left on each side."""
    owner: dict[int, int] = {}  # problem index -> expectation index

    def assign(e: int, seen: set[int]) -> bool:
        for p, problem in enumerate(problems):
            if p not in seen and expected[e].matches(problem):
                seen.add(p)
                if p not in owner or assign(owner[p], seen):
                    owner[p] = e
                    return True
        return False

    unmatched = [expected[e] for e in range(len(expected)) if not assign(e, set())]
    extra = [p for i, p in enumerate(problems) if i not in owner]
    return unmatched, extra


def test_there_are_enough_broken_files() -> None:
    assert len(BROKEN_FILES) >= 5
    for path in BROKEN_FILES:
        assert expectations(path), f"{path.name} expects nothing"


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.stem)
def test_broken_file_reports_every_problem_with_its_line(path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load(path)
    problems = caught.value.problems
    for p in problems:
        assert Path(p.file).resolve() == path.resolve(), p
        assert p.message and not p.message.startswith("could not be checked"), p
    unmatched, extra = match(expectations(path), problems)
    report = "\n".join(
        ["expected but not reported:", *map(str, unmatched)]
        + ["reported but not expected:", *(f"line {p.line}: {p}" for p in extra)]
    )
    assert not unmatched and not extra, report
    # the text a user sees: one line per problem, each with file:line, in file order
    text = str(caught.value).splitlines()
    assert len(text) == len(problems)
    assert problems == sorted(problems)
    for line, p in zip(text, problems, strict=True):
        assert line.startswith(f"{p.file}:{p.line}: " if p.line else f"{p.file}: ")


def test_marker_parser() -> None:
    text = "x = 1  # expect: a.b | msg one # expect: c | msg two | 'v'\n# expect-file: | whole\n"
    f = Path(__file__).parent / "broken" / "_unused"
    parsed = [
        Expect(*fields)
        for fields in [(1, "a.b", "msg one"), (1, "c", "msg two", "'v'"), (0, "", "whole")]
    ]
    assert _parse_text(text, f) == parsed


def _parse_text(text: str, path: Path) -> list[Expect]:
    class _Fake(type(path)):  # type: ignore[misc]
        def read_text(self, *a: object, **k: object) -> str:  # noqa: ARG002
            return text

    return expectations(_Fake(path))


def test_matching_is_one_to_one() -> None:
    p = Problem("f.py", 3, "applications[a].sla", "min (3) is more than max (2)")
    assert match([Expect(3, "sla", "min")], [p, p]) == ([], [p])
    assert match([Expect(3, "sla", "min"), Expect(3, "sla", "min")], [p]) == (
        [Expect(3, "sla", "min")],
        [],
    )
    assert match([Expect(4, "sla", "min")], [p]) == ([Expect(4, "sla", "min")], [p])


# --- routes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("/catalog", {"method": "*", "path": "/catalog"}),
        ("GET /catalog", {"method": "GET", "path": "/catalog"}),
        ("get /catalog*", {"method": "GET", "path": "/catalog*"}),
        ("  POST   /cart  ", {"method": "POST", "path": "/cart"}),
        ("* /x", {"method": "*", "path": "/x"}),
    ],
)
def test_parse_route(text: str, parsed: dict[str, str]) -> None:
    assert parse_route(text) == parsed


@pytest.mark.parametrize("text", ["", "GET /a /b", "GET /a extra words"])
def test_parse_route_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be 'METHOD /path' or '/path'"):
        parse_route(text)


@pytest.mark.parametrize(
    ("method", "result"),
    [("GET", "GET"), ("get", "GET"), ("Delete", "DELETE"), ("*", "*"), ("options", "OPTIONS")],
)
def test_check_method(method: str, result: str) -> None:
    assert check_method(method) == result


@pytest.mark.parametrize("method", ["FETCH", "", "GET POST", "CONNECT", "TRACE", "**"])
def test_check_method_rejects(method: str) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        check_method(method)


@pytest.mark.parametrize(
    "path", ["/", "/a", "/a/b.c", "/a*", "/a?b", "/~user/%20x", "/a-b_c:d@e", "/*.png"]
)
def test_check_path_accepts(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "must start with '/'"),
        ("a/b", "must start with '/'"),
        ("*", "must start with '/'"),
        ("/a b", "URL path characters"),
        ("/a#b", "URL path characters"),
        ("/é", "URL path characters"),
        ("/a\\b", "URL path characters"),
        ("/a[1]", "URL path characters"),
        ("/a**", "'**' is the same as '*'"),
        ("/**/x", "'**' is the same as '*'"),
    ],
)
def test_check_path_rejects(path: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_path(path)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("path", "glob", "spec", "regex"),
    [
        ("/", False, 1, "^/"),
        ("/catalog", False, 8, "^/catalog"),
        ("/catalog*", True, 8, "^/catalog.*$"),
        ("/a?c", True, 2, "^/a.c$"),
        ("/*.png", True, 1, "^/.*\\.png$"),
        ("/v1/*/items", True, 4, "^/v1/.*/items$"),
        ("/a.b", False, 4, "^/a\\.b"),
    ],
)
def test_glob_specificity_regex(path: str, glob: bool, spec: int, regex: str) -> None:
    assert is_glob(path) is glob
    assert specificity(path) == spec
    assert to_regex(path) == regex


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        ("GET", "GET", True),
        ("GET", "POST", False),
        ("*", "POST", True),
        ("DELETE", "*", True),
        ("*", "*", True),
    ],
)
def test_methods_meet(a: str, b: str, meet: bool) -> None:
    assert methods_meet(a, b) is meet
    assert methods_meet(b, a) is meet


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        # prefixes: one is a prefix of the other, or they part ways
        ("/a", "/a", True),
        ("/a", "/ab", True),
        ("/a", "/b", False),
        ("/cat", "/catalog", True),
        ("/catalog", "/cart", False),
        # a prefix is the glob `prefix*`
        ("/a", "/a*", True),
        ("/a", "/?", True),
        ("/ab", "/?c", False),
        ("/a", "/*b", True),
        ("/x/", "/*.png", True),
        # globs against globs
        ("/a?c", "/abc", True),
        ("/a?c", "/abd*", False),
        ("/a*", "/b*", False),
        ("/*a", "/*b", False),
        ("/*a*", "/*b*", True),
        ("/x*y", "/x*z", False),
        ("/a/*/b", "/a/*/c", False),
        ("/a/*/b", "/a/x/*", True),
        ("/img/*.png", "/img/*.jpg", False),
        ("/img/*.png", "/img/a*", True),
        ("/??", "/a", True),
        ("/??", "/abc?", False),
        ("/???", "/ab", True),
        ("/a?", "/a", True),
        ("/*", "/x?y?z", True),
        ("/*ab*", "/*ba*", True),
        ("/a*b*c", "/a*c*b", False),  # one ends in c, the other in b
        ("/a*b*c*", "/a*c*b*", True),
        ("/a*b", "/*ab", True),
        ("/ab*", "/*ba", True),
        ("/a?*b", "/ab", True),
        ("/a?b", "/a??b", False),
        ("/a*", "/?b*?", True),
    ],
)
def test_patterns_meet(a: str, b: str, meet: bool) -> None:
    assert patterns_meet(a, b) is meet
    assert patterns_meet(b, a) is meet
    if meet and is_glob(a) and is_glob(b):
        # and a witness exists: a concrete path both regular expressions accept
        assert _witness(a, b) is not None, (a, b)


def _witness(a: str, b: str) -> str | None:
    """A path both globs accept, checked against their regular expressions (or None)."""
    found = _build_witness(a, b)
    if found is not None:
        assert re.match(to_regex(a), found) and re.match(to_regex(b), found), (a, b, found)
    return found


def _build_witness(a: str, b: str) -> str | None:
    if not a and not b:
        return ""
    if a[:1] == "*":
        found = _build_witness(a[1:], b)  # the star takes nothing
        if found is None and b:  # or it takes b's first character
            rest = _build_witness(a, b[1:])
            if rest is not None:
                found = rest if b[0] == "*" else ("z" if b[0] == "?" else b[0]) + rest
        return found
    if b[:1] == "*":
        return _build_witness(b, a)
    if a and b and (a[0] == b[0] or "?" in (a[0], b[0])):
        rest = _build_witness(a[1:], b[1:])
        char = b[0] if a[0] == "?" else a[0]
        return None if rest is None else ("z" if char == "?" else char) + rest
    return None


# --- individual rules, through load(), with the line of the failing object ------

_APP_LINE = "app = Application("
_NET_LINE = "network = EdgeNetwork("

RULES: list[tuple[str, dict[str, str], str, str, str]] = [
    # (id, substitutions, where: the text on the expected line, path, message fragment)
    (
        "unknown field",
        {"sla": "SLA(max_response_ms=200, users_per_instance=10, p99=3)"},
        "sla=",
        "applications[hello].sla.p99",
        "unknown field; allowed: idle_s, max_response_ms, panic_factor",
    ),
    (
        "missing field",
        {"owner": 'Owner(name="Acme")'},
        "owner=",
        "applications[hello].owner.id",
        "required field is missing",
    ),
    (
        "min > max",
        {"distribution": "Distribution(min=3, max=2)"},
        "distribution=",
        "applications[hello].distribution",
        "min (3) is more than max (2)",
    ),
    (
        "regions and edgepoints",
        {"distribution": 'Distribution(regions=["eu-central"], edgepoints=["ep1"])'},
        "distribution=",
        "applications[hello].distribution",
        "give regions or edgepoints, not both",
    ),
    (
        "scale-down at or above target",
        {"sla": "SLA(max_response_ms=200, users_per_instance=10, scale_down_below=1)"},
        "sla=",
        "applications[hello].sla",
        "scale_down_below (1.0) must be below 1",
    ),
    (
        "panic factor",
        {"sla": "SLA(max_response_ms=200, users_per_instance=10, panic_factor=0.5)"},
        "sla=",
        "applications[hello].sla",
        "panic_factor (0.5) must be above 1",
    ),
    (
        "percentile",
        {"sla": "SLA(max_response_ms=200, users_per_instance=10, percentile=100)"},
        "sla=",
        "applications[hello].sla.percentile",
        "less than 100",
    ),
    (
        "warm pool above max",
        {"sla": "SLA(max_response_ms=200, users_per_instance=10, warm_pool=3)"},
        "sla=",
        "applications[hello].sla.warm_pool",
        "more than distribution.max (2) instances per edgepoint",
    ),
    (
        "app name",
        {"app_name": '"Hello"'},
        _APP_LINE,
        "applications[Hello].name",
        "must be a DNS label",
    ),
    (
        "version",
        {"version": '"v 1"'},
        _APP_LINE,
        "applications[hello].version",
        "must be letters, digits and '.', '_', '+', '-'",
    ),
    (
        "priority",
        {
            "extra": 'bad = Application(**{**dict(app), "name": "bad", "priority": 101, '
            '"routing": Routing(hosts=["bad.example.com"])})'
        },
        "bad = Application(",
        "priority",
        "less than or equal to 100",
    ),
    (
        "no routing key",
        {"routing": "Routing()"},
        "routing=",
        "applications[hello].routing",
        "give hosts, a path_prefix, or both",
    ),
    (
        "host name",
        {"routing": 'Routing(hosts=["Hello.example.com"])'},
        "routing=",
        "applications[hello].routing.hosts",
        "is not a lowercase host name",
    ),
    (
        "routing prefix glob",
        {"routing": 'Routing(path_prefix="/hello/*")'},
        "routing=",
        "applications[hello].routing.path_prefix",
        "takes no wildcards",
    ),
    (
        "empty command",
        {"tiers": '[Tier(name="web", command="")]'},
        "tiers=",
        "applications[hello].tiers[0].command",
        "at least 1 item",
    ),
    (
        "PORT in env",
        {"tiers": '[Tier(name="web", command="x", env={"PORT": "1"})]'},
        "tiers=",
        "applications[hello].tiers[0].env",
        "PORT is set by edgeshot",
    ),
    (
        "env name",
        {"tiers": '[Tier(name="web", command="x", env={"A-B": "1"})]'},
        "tiers=",
        "applications[hello].tiers[0].env",
        "'A-B' is not an environment variable name",
    ),
    (
        "two tiers, no entry",
        {"tiers": '[Tier(name="web", command="x"), Tier(name="db", command="y", port=8001)]'},
        _APP_LINE,
        "applications[hello]",
        "exactly one tier must be the entry (entry=True); found 0",
    ),
    (
        "tier names",
        {
            "tiers": '[Tier(name="web", command="x", entry=True), '
            'Tier(name="web", command="y", port=8001)]'
        },
        _APP_LINE,
        "applications[hello]",
        "tier names must be unique; repeated: web",
    ),
    (
        "tier ports",
        {"tiers": '[Tier(name="web", command="x", entry=True), Tier(name="db", command="y")]'},
        _APP_LINE,
        "applications[hello]",
        "their ports must differ; repeated: [8000]",
    ),
    (
        "memory",
        {"tiers": '[Tier(name="web", command="x", resources=Resources(memory_mb=8))]'},
        "tiers=",
        "applications[hello].tiers[web].resources.memory_mb",
        "greater than or equal to 16",
    ),
    (
        "cpu",
        {"tiers": '[Tier(name="web", command="x", resources=Resources(cpu="65"))]'},
        "tiers=",
        "applications[hello].tiers[web].resources.cpu",
        "less than or equal to 64",
    ),
    (
        "health path",
        {"tiers": '[Tier(name="web", command="x", health=HealthCheck(path="healthz"))]'},
        "tiers=",
        "applications[hello].tiers[web].health.path",
        "must start with '/'",
    ),
    (
        "money text",
        {"budget": 'Budget(monthly="50")'},
        "budget=",
        "applications[hello].budget.monthly",
        "must be written 'AMOUNT CUR'",
    ),
    (
        "money amount",
        {"budget": 'Budget(monthly="fifty EUR")'},
        "budget=",
        "applications[hello].budget.monthly.amount",
        "valid decimal",
    ),
    (
        "currency code",
        {"budget": 'Budget(monthly="50 eur")'},
        "budget=",
        "applications[hello].budget.monthly.currency",
        "ISO 4217",
    ),
    (
        "currency mismatch",
        {"budget": 'Budget(monthly="50 USD")'},
        "budget=",
        "applications[hello].budget.monthly",
        "the network prices in EUR; write the budget in EUR",
    ),
    (
        "budget below the minimum",
        {"distribution": "Distribution(min=2, max=2)", "budget": 'Budget(monthly="1 EUR")'},
        "budget=",
        "applications[hello].budget.monthly",
        "cannot pay for the minimum: 2 instance(s) x 1 edgepoint(s) cost at least 5.26 EUR",
    ),
    (
        "route method",
        {"cleave": 'Cleave(edge=["FETCH /a"])'},
        "cleave=",
        "applications[hello].cleave.edge[0].method",
        "unknown method 'FETCH'",
    ),
    (
        "route words",
        {"cleave": 'Cleave(edge=["GET /a b"])'},
        "cleave=",
        "applications[hello].cleave.edge[0]",
        "must be 'METHOD /path' or '/path'",
    ),
    (
        "transactional edge route",
        {"cleave": 'Cleave(edge=[Route(path="/pay", transactional=True)])'},
        "cleave=",
        "applications[hello].cleave.edge",
        "* /pay is marked transactional: only origin routes can be",
    ),
    (
        "origin without an origin",
        {"cleave": 'Cleave(origin=["POST /checkout"])'},
        "cleave=",
        "applications[hello].cleave.origin_url",
        "origin routes need an origin",
    ),
    (
        "default origin without an origin",
        {"cleave": 'Cleave(default="origin")'},
        "cleave=",
        "applications[hello].cleave.origin_url",
        "origin routes need an origin",
    ),
    (
        "overlapping cleave",
        {"cleave": 'Cleave(edge=["/a*"], origin=["/a?"], origin_url="https://o.example")'},
        "cleave=",
        "applications[hello].cleave.origin[0]",
        "overlaps edge/origin route * /a* with equal specificity",
    ),
    (
        "repeated cleave route",
        {"cleave": 'Cleave(edge=["GET /a", "GET /a"])'},
        "cleave=",
        "applications[hello].cleave.edge[1]",
        "route repeated (also in cleave.edge)",
    ),
    (
        "unknown region",
        {"distribution": 'Distribution(regions=["mars"])'},
        "distribution=",
        "applications[hello].distribution.regions[0]",
        "unknown region; allowed: eu-central",
    ),
    (
        "region without edgepoints",
        {"distribution": 'Distribution(regions=["us-east"])'},
        "distribution=",
        "applications[hello].distribution.regions[0]",
        "no edgepoint of the network is in this region",
    ),
    (
        "unknown edgepoint",
        {"distribution": 'Distribution(edgepoints=["ep9"])'},
        "distribution=",
        "applications[hello].distribution.edgepoints[0]",
        "the network has no such edgepoint; allowed: ep1",
    ),
    (
        "global max below the minimum",
        {"distribution": "Distribution(min=2, max=3, global_max=1)"},
        "distribution=",
        "applications[hello].distribution.global_max",
        "less than min (2) x 1 edgepoints = 2",
    ),
    (
        "more than the slots",
        {"distribution": "Distribution(min=9, max=9)", "budget": 'Budget(monthly="1000 EUR")'},
        "distribution=",
        "applications[hello].distribution.min",
        "more instances than the smallest chosen edgepoint has slots (8)",
    ),
    (
        "edgepoint region",
        {
            "edgepoints": '[Edgepoint(name="ep1", region="mars", location="local", '
            'server_type="local")]'
        },
        "edgepoints=",
        "network.edgepoints[ep1].region",
        "unknown region; allowed: af-south",
    ),
    (
        "local edgepoint servers",
        {
            "edgepoints": '[Edgepoint(name="ep1", region="eu-central", location="local", '
            'server_type="local", servers=255)]'
        },
        "edgepoints=",
        "network.edgepoints[ep1].servers",
        "at most 254",
    ),
    (
        "edgepoint slots",
        {
            "edgepoints": '[Edgepoint(name="ep1", region="eu-central", location="local", '
            'server_type="local", slots_per_server=0)]'
        },
        "edgepoints=",
        "network.edgepoints[0].slots_per_server",
        "greater than or equal to 1",
    ),
    (
        "no edgepoints",
        {"edgepoints": "[]"},
        _NET_LINE,
        "network.edgepoints",
        "at least 1 item",
    ),
    (
        "provider kind",
        {"provider": '{"kind": "azure"}'},
        _NET_LINE,
        "network.provider",
        "does not match any of the expected tags: 'local', 'hetzner', 'aws', 'digitalocean'",
    ),
    (
        "hetzner location",
        {**HETZNER, "controller": 'Controller(location="nbg2", server_type="cx22")'},
        "controller=",
        "network.controller.location",
        "not a hetzner location; allowed: ash, fsn1, hel1, hil, nbg1, sin",
    ),
    (
        "hetzner server type",
        {**HETZNER, "controller": 'Controller(location="nbg1", server_type="cx11")'},
        "controller=",
        "network.controller.server_type",
        "not a hetzner server type; allowed: ccx13",
    ),
    (
        "pricing negative",
        {"pricing": 'Pricing(cpu_second="-1", memory_gb_second="0", network_gb="0")'},
        "pricing=",
        "network.pricing.cpu_second",
        "greater than or equal to 0",
    ),
    (
        "pricing not a number",
        {"pricing": 'Pricing(cpu_second="NaN", memory_gb_second="0", network_gb="0")'},
        "pricing=",
        "network.pricing.cpu_second",
        "finite number",
    ),
    (
        "peak window empty",
        {
            "pricing": 'Pricing(cpu_second="0", memory_gb_second="0", network_gb="0", '
            'peak=PeakWindow(start="09:00", end="09:00", multiplier=2))'
        },
        "pricing=",
        "network.pricing.peak",
        "start and end are equal",
    ),
    (
        "peak time zone",
        {
            "pricing": 'Pricing(cpu_second="0", memory_gb_second="0", network_gb="0", '
            'peak=PeakWindow(start="09:00", end="17:00", multiplier=2, timezone="CET+1"))'
        },
        "pricing=",
        "network.pricing.peak.timezone",
        "must be an IANA time zone",
    ),
    (
        "peak weekday",
        {
            "pricing": 'Pricing(cpu_second="0", memory_gb_second="0", network_gb="0", '
            'peak=PeakWindow(start="09:00", end="17:00", multiplier=2, weekdays=["monday"]))'
        },
        "pricing=",
        "network.pricing.peak.weekdays[0]",
        "'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'",
    ),
    (
        "command: unknown variable",
        {"tiers": '[Tier(name="web", command="gunicorn -b 0.0.0.0:$PROT app:app")]'},
        "tiers=",
        "applications[hello].tiers[web].command[2]",
        "$PROT is not a variable of this tier; allowed: $PORT (add it to the tier's env)",
    ),
    (
        "command: a secret is not expanded",
        {"tiers": '[Tier(name="web", command="app --key ${API_KEY}", secrets=("API_KEY",))]'},
        "tiers=",
        "applications[hello].tiers[web].command[2]",
        "$API_KEY is a secret: secrets are not expanded into command lines",
    ),
    (
        "command: command substitution",
        {"tiers": '[Tier(name="web", command=("sh", "-c", "echo $(id)"))]'},
        "tiers=",
        "applications[hello].tiers[web].command[2]",
        "$(…) command substitution is not supported",
    ),
    (
        "command: shell default syntax",
        {"tiers": '[Tier(name="web", command="app --port ${PORT:-8000}")]'},
        "tiers=",
        "applications[hello].tiers[web].command[2]",
        "${…} must hold just a variable name",
    ),
    (
        "command: lone dollar",
        {"tiers": '[Tier(name="web", command="app --price 5$", env={"X": "1"})]'},
        "tiers=",
        "applications[hello].tiers[web].command[2]",
        "a lone $ at the end of the word; allowed: $PORT, ${PORT}",
    ),
    (
        "network name",
        {"network_name": '"Test Net"'},
        _NET_LINE,
        "network.name",
        "must be a DNS label",
    ),
    (
        "source missing",
        {"source": 'Source(path="no-such-dir")'},
        "source=",
        "applications[hello].source.path",
        "no such file or directory next to the policy file",
    ),
    (
        "load test looser than the SLA",
        {
            "extra": "lt = LoadTest(users=1, spawn_rate=1, duration_s=1, "
            'paths=[WeightedPath(path="/")], criteria=PassCriteria(max_response_ms=300))\n'
            'app2 = Application(**{**dict(app), "name": "two", '
            '"routing": Routing(hosts=["two.example.com"]), "load_test": lt})'
        },
        "lt = LoadTest(",  # where the PassCriteria was written
        "applications[two].load_test.criteria.max_response_ms",
        "looser than the SLA's max_response_ms (200)",
    ),
    (
        "load test paths",
        {"extra": "lt = LoadTest(users=1, spawn_rate=0, duration_s=1, paths=[])"},
        "lt = LoadTest(",
        "LoadTest.",
        "",
    ),
    (
        "duplicate app",
        {"extra": 'app2 = Application(**{**dict(app), "routing": Routing(hosts=["hello.example.com"])})'},
        "app2 = Application(",
        "applications[hello].",
        "",
    ),
    (
        "the policy raises",
        {"extra": "x = 1 / 0"},
        "x = 1 / 0",
        "",
        "the policy file raised ZeroDivisionError: division by zero",
    ),
    (
        "a second network",
        {"extra": "other = EdgeNetwork(**dict(network))"},
        "other = EdgeNetwork(",
        "network",
        "a policy file declares one EdgeNetwork; this is a second",
    ),
]

# Some rules report more than one problem at the same place.
RULE_COUNTS = {"load test paths": 2, "duplicate app": 2}


@pytest.mark.parametrize(
    ("subs", "where", "path", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in RULES],
)
def test_rule(policy, subs: dict[str, str], where: str, path: str, message: str, request) -> None:
    file = policy(**subs)
    line = next(n for n, text in enumerate(file.read_text().splitlines(), start=1) if where in text)
    with pytest.raises(SpecError) as caught:
        load(file)
    problems = caught.value.problems
    count = RULE_COUNTS.get(request.node.callspec.id, 1)
    assert len(problems) == count, "\n".join(map(str, problems))
    for p in problems:
        assert (p.line, Path(p.file).resolve()) == (line, file.resolve()), str(p)
        assert path in p.path and message in p.message, str(p)


def test_duplicate_app_reports_name_and_routing_key(policy) -> None:
    with pytest.raises(SpecError) as caught:
        load(policy(extra="app2 = Application(**dict(app))"))
    messages = sorted(p.message for p in caught.value.problems)
    assert messages[0].startswith("app 'hello' is declared twice (also at ")
    assert messages[1].startswith("routing key already used by app 'hello'")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("budget", '"50 EUR"', "valid dictionary or instance of Budget"),
        ("budget", "None", "valid dictionary or instance of Budget"),
        ("budget", 'Money(amount="5")', "valid dictionary or instance of Budget"),
        ("sla", "Distribution(max=2)", "valid dictionary or instance of SLA"),
        ("distribution", '"eu-central"', "valid dictionary or instance of Distribution"),
        ("tiers", '"web"', "valid tuple"),
        ("tiers", '["python app.py"]', "valid dictionary or instance of Tier"),
        ("owner", '"acme"', "valid dictionary or instance of Owner"),
        ("routing", '"hello.example.com"', "valid dictionary or instance of Routing"),
        ("cleave", '["GET /a"]', "valid dictionary or instance of Cleave"),
        ("source", 'Owner(id="x")', "valid dictionary or instance of Source"),
        ("app_name", "[]", "valid string"),
        ("app_name", "None", "valid string"),
    ],
)
def test_raw_values_where_objects_belong(policy, field: str, value: str, fragment: str) -> None:
    """A half-built app holds what was written; the checks across objects skip what is
    not an object of the right kind, and the network is still checked."""
    path = policy(
        **{field: value},
        edgepoints='[Edgepoint(name="ep1", region="mars", location="local", server_type="local")]',
    )
    with pytest.raises(SpecError) as caught:
        load(path)
    found = sorted((p.path, p.message) for p in caught.value.problems)
    assert len(found) == 2, found
    assert any(fragment in m for _, m in found), found
    assert any(p == "network.edgepoints[ep1].region" for p, _ in found), found


@pytest.mark.parametrize(
    "source",
    [
        'Source(path="x" * 5000)',  # longer than a file name may be
        'Source(path="a\\x00b")',  # NUL byte
        'Source(path="../" * 40 + "nope")',
    ],
)
def test_odd_source_paths_are_problems(policy, source: str) -> None:
    with pytest.raises(SpecError) as caught:
        load(policy(source=source))
    [problem] = caught.value.problems
    assert problem.path == "applications[hello].source.path"
    assert "no such file or directory next to the policy file" in problem.message


@pytest.mark.parametrize(
    "pricing",
    [
        'Pricing(cpu_second="9e999999", memory_gb_second="0", network_gb="0")',
        'Pricing(cpu_second="0", memory_gb_second="1e30", network_gb="0")',
        'Pricing(cpu_second="1e20", memory_gb_second="0", network_gb="0", '
        'peak=PeakWindow(start="08:00", end="09:00", multiplier="1e999990"))',
    ],
)
def test_costs_too_large_to_compute_are_a_problem(policy, pricing: str) -> None:
    with pytest.raises(SpecError) as caught:
        load(policy(pricing=pricing, distribution="Distribution(min=1, max=1)"))
    [problem] = caught.value.problems
    assert problem.path == "applications[hello].budget.monthly"
    assert "monthly cost is too large to compute" in problem.message


# --- models built directly: rule -> message -----------------------------------

MODEL_RULES = [
    (Money, {"amount": "1", "currency": "EURO"}, "ISO 4217"),
    (Money, {"amount": "-1"}, "greater than or equal to 0"),
    (Route, {"path": "/a", "method": "BREW"}, "unknown method 'BREW'"),
    (Route, {"path": "/a/**"}, "'**' is the same as '*'"),
    (Route, {"path": "/a", "transactional": "perhaps"}, "valid boolean"),
    (Cleave, {"default": "middle"}, "'edge' or 'origin'"),
    (Cleave, {"edge": [Route(path="/p", transactional=True)]}, "only origin routes can be"),
    (Distribution, {"min": -1}, "greater than or equal to 0"),
    (Distribution, {"min": 2, "max": 1}, "min (2) is more than max (1)"),
    (Distribution, {"global_max": 0}, "greater than or equal to 1"),
    (Distribution, {"regions": ["EU"]}, "must be a DNS label"),
    (SLA, {"max_response_ms": 1}, "Field required"),
    (SLA, {"max_response_ms": 1, "users_per_instance": 0}, "greater than or equal to 1"),
    (SLA, {"max_response_ms": 1, "users_per_instance": 1, "percentile": 49}, "greater than"),
    (SLA, {"max_response_ms": 1, "users_per_instance": 1, "idle_s": -1}, "greater than"),
    (SLA, {"max_response_ms": 1, "users_per_instance": 1, "scale_down_below": 2}, "below 1"),
    (SLA, {"max_response_ms": 1, "users_per_instance": 1, "panic_factor": 1}, "above 1"),
    (Budget, {"monthly": "5 EUR", "warn_at": 0}, "greater than 0"),
    (Tier, {"name": "web", "command": "x", "port": 0}, "greater than or equal to 1"),
    (Tier, {"name": "web", "command": "x", "env": {"PORT": "80"}}, "PORT is set by edgeshot"),
    (Tier, {"name": "web", "command": "'unbalanced"}, "No closing quotation"),
    (HealthCheck, {"start_timeout_s": 0}, "greater than 0"),
    (Resources, {"cpu": 0}, "greater than 0"),
    (WarmupRequest, {"path": "/", "count": 0}, "greater than or equal to 1"),
    (Routing, {"hosts": ["a..b"]}, "not a lowercase host name"),
    (Routing, {"hosts": ["*"]}, "not a lowercase host name"),
    (Routing, {"path_prefix": "x"}, "must start with '/'"),
    (Owner, {"id": "acme", "org": "x"}, "Extra inputs are not permitted"),
    (PeakWindow, {"start": "25:00", "end": "01:00", "multiplier": 2}, "valid time"),
    (PeakWindow, {"start": "01:00", "end": "02:00", "multiplier": "0.9"}, "greater than or equal"),
    (PassCriteria, {"max_error_rate": 1.5}, "less than or equal to 1"),
    (LoadTest, {"users": 1, "spawn_rate": 1, "duration_s": 1, "paths": []}, "at least 1 item"),
    (Pricing, {"cpu_second": 0, "memory_gb_second": 0}, "Field required"),
]


@pytest.mark.parametrize(
    ("model", "data", "fragment"),
    MODEL_RULES,
    ids=[f"{m.__name__}-{i}" for i, (m, _, _) in enumerate(MODEL_RULES)],
)
def test_model_rule(model: type, data: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model(**data)
    assert fragment in str(caught.value)


VALID_MODELS = [
    (Money, {"amount": "0"}),
    (Route, {"path": "/a*", "method": "get"}),
    (Cleave, {"edge": ["GET /catalog*"], "origin": [Route(path="/pay", transactional=True)]}),
    (Distribution, {"min": 2, "max": 2, "global_max": 4}),
    (SLA, {"max_response_ms": 1, "users_per_instance": 1, "scale_down_below": 0.99}),
    (Tier, {"name": "web", "command": "python -m http.server $PORT", "env": {"_X1": "y"}}),
    (Routing, {"hosts": ["*.example.com", "a-b.c"], "path_prefix": "/x/"}),
    (PeakWindow, {"start": "22:00", "end": "06:00", "multiplier": 1, "timezone": "Europe/Berlin"}),
]


@pytest.mark.parametrize(("model", "data"), VALID_MODELS, ids=lambda v: getattr(v, "__name__", ""))
def test_model_valid(model: type, data: dict) -> None:
    obj = model(**data)
    assert obj.is_valid
    assert model.model_validate_json(obj.model_dump_json()) == obj


def test_route_text_forms() -> None:
    assert Route.model_validate("get /a*") == Route(method="GET", path="/a*")
    assert str(Route.model_validate("/a")) == "* /a"
    assert Cleave(edge=["POST /b"]).edge == (Route(method="POST", path="/b"),)
    assert Tier(name="w", command="python 'my app.py' --port $PORT").command == (
        "python",
        "my app.py",
        "--port",
        "$PORT",
    )
    assert Money.model_validate("2.50 USD") == Money(amount=Decimal("2.50"), currency="USD")


def test_objects_remember_where_they_were_written() -> None:
    line = sys._getframe().f_lineno + 1
    here, tier = Owner(id="acme").written_at, Tier(
        name="web",
        command="x",
    ).written_at
    assert here is not None and tier is not None
    assert (here.file, here.line) == (__file__, line)
    assert (tier.file, tier.line) == (__file__, line)  # a call spanning lines: its first line


# --- valid declarations ---------------------------------------------------------


def test_minimal_template_loads(policy) -> None:
    spec = load(policy())
    assert isinstance(spec, Spec)
    assert spec.network.name == "testnet"
    assert [a.name for a in spec.applications] == ["hello"]
    app = spec.application("hello")
    assert app.entry_tier.name == "web"
    assert app.vendor_name == "acme"
    assert app.key == "hello@1.0.0"
    assert Path(spec.base_dir) == policy().parent
    assert spec.source_dir(app) == policy().parent.resolve()
    assert [e.name for e in select_edgepoints(app, spec.network)] == ["ep1"]
    assert app.written_at is not None and app.written_at.line == _line(policy(), _APP_LINE)


def _line(path: Path, text: str) -> int:
    return next(n for n, t in enumerate(path.read_text().splitlines(), 1) if text in t)


def test_hetzner_template_loads(policy) -> None:
    spec = load(policy(**HETZNER))
    assert spec.network.provider.kind == "hetzner"


def test_full_declaration_loads(policy) -> None:
    """Every optional part used at once, and no rule fires."""
    spec = load(
        policy(
            **HETZNER,
            pricing=(
                'Pricing(currency="EUR", cpu_second="0.00002", memory_gb_second="0.000002", '
                'network_gb="0.01", disk_io_gb="0.001", storage_gb_hour="0.0001", '
                'peak=PeakWindow(start="18:00", end="22:00", multiplier="1.5", '
                'timezone="Europe/Berlin"))'
            ),
            tiers=(
                '[Tier(name="web", command="python web.py", entry=True, env={"STORE": "x"}), '
                'Tier(name="store", command=["python", "store.py"], port=8001, health=None, '
                'resources=Resources(cpu="0.25", memory_mb=128))]'
            ),
            cleave=(
                'Cleave(edge=["GET /catalog*", "/cart"], origin=["POST /checkout", '
                'Route(method="POST", path="/pay", transactional=True), "GET /catalog/admin*"], '
                'origin_url="https://origin.example.com", affinity=True)'
            ),
            distribution='Distribution(regions=["eu-central"], min=1, max=3, global_max=5)',
            sla="SLA(max_response_ms=150, users_per_instance=20, warm_pool=1, idle_s=60)",
            budget='Budget(monthly=Money(amount="100", currency="EUR"), warn_at=0.9)',
            extra=(
                'lt = LoadTest(users=50, spawn_rate=5, duration_s=30, regions=["eu-west"], '
                'paths=[WeightedPath(path="/catalog", weight=3), '
                'WeightedPath(method="POST", path="/cart")], '
                "criteria=PassCriteria(max_response_ms=150))\n"
                'shop = Application(**{**dict(app), "name": "shop", "routing": '
                'Routing(hosts=["shop.example.com"], path_prefix="/shop"), "load_test": lt, '
                '"warmup": [WarmupRequest(path="/catalog", count=5)], "priority": 80, '
                '"owner": Owner(id="acme-shop", organisation="Acme"), "vendor": "acme-soft"})'
            ),
        )
    )
    shop = spec.application("shop")
    assert shop.vendor_name == "acme-soft"
    assert [r.transactional for r in shop.cleave.origin] == [False, True, False]
    assert spec.network.pricing.peak is not None


def test_instance_month_is_what_the_budget_check_uses(policy) -> None:
    spec = load(policy(distribution="Distribution(min=1, max=1)"))
    app = spec.application("hello")
    idle = instance_month(app, spec.network.pricing, busy=False)
    busy = instance_month(app, spec.network.pricing, busy=True)
    assert Decimal(0) < idle < busy
    # 0.5 CPU at 5% and 0.25 GB, at 0.00002 and 0.000002 per second, for 730 hours
    assert (
        idle
        == (
            Decimal("0.5") * Decimal("0.05") * Decimal("0.00002")
            + Decimal("0.25") * Decimal("0.000002")
        )
        * 730
        * 3600
    )
    just_short = (idle - Decimal("0.01")).quantize(Decimal("0.01"))
    with pytest.raises(SpecError, match="cannot pay for the minimum"):
        load(
            policy(
                distribution="Distribution(min=1, max=1)",
                budget=f'Budget(monthly="{just_short} EUR")',
            )
        )
    enough = idle.quantize(Decimal("0.01")) + Decimal("0.01")
    load(
        policy(distribution="Distribution(min=1, max=1)", budget=f'Budget(monthly="{enough} EUR")')
    )


def test_policy_text_and_unknown_template_fields() -> None:
    assert "Local()" in policy_text()
    with pytest.raises(KeyError):
        policy_text(nonsense="1")


# --- load() itself --------------------------------------------------------------


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such policy file") as caught:
        load(tmp_path / "missing.py")
    assert caught.value.problems[0].line == 0


def test_not_a_python_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("network: {}\n")
    with pytest.raises(SpecError, match=r"a policy file is a Python module \(\*\.py\)"):
        load(path)


def test_a_directory_is_not_a_policy(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such policy file"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("raise SystemExit(3)", "the policy file raised SystemExit: 3"),
        ("import sys; sys.exit()", "the policy file raised SystemExit"),
        ("import no_such_module_here", "ModuleNotFoundError: No module named"),
        ("def f(): return f()\nf()", "RecursionError"),
        ("assert False, 'nope'", "the policy file raised AssertionError: nope"),
        ("Route('GET /x')", "TypeError"),
    ],
)
def test_whatever_the_file_raises_is_a_problem(policy, extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        load(policy(extra=extra))
    assert caught.value.problems[0].line > 0


def test_problems_before_an_exception_are_kept(policy) -> None:
    with pytest.raises(SpecError) as caught:
        load(policy(distribution="Distribution(min=3, max=2)", extra="raise ValueError('x')"))
    assert [p.message for p in caught.value.problems] == [
        "min (3) is more than max (2)",
        "the policy file raised ValueError: x",
    ]


def test_loading_leaves_the_interpreter_as_it_was(policy) -> None:
    """A policy file may meddle with sys.path (even empty it); load() puts it back."""
    path_before, modules_before = list(sys.path), set(sys.modules)
    with pytest.raises(SpecError, match="declares no EdgeNetwork"):
        load(policy(extra="import sys\nsys.path.clear()\ndel network"))
    assert sys.path == path_before
    load(policy(extra="import sys\nsys.path.insert(0, '/nowhere')\nsys.path.pop()"))
    assert sys.path == path_before
    assert not {m for m in set(sys.modules) - modules_before if m.startswith("edgeshot_policy")}


def test_sibling_modules_are_importable_and_forgotten(tmp_path: Path) -> None:
    (tmp_path / "parts.py").write_text('OWNER_ID = "acme"\n')
    path = write_policy(
        tmp_path, owner="Owner(id=parts.OWNER_ID)", extra="import parts  # noqa: E402"
    )
    text = path.read_text().replace("import parts  # noqa: E402\n", "")
    path.write_text("import parts\n" + text)
    assert load(path).application("hello").owner.id == "acme"
    assert "parts" not in sys.modules


def test_objects_in_containers_are_found(policy) -> None:
    spec = load(
        policy(
            extra='apps = {"more": [Application(**{**dict(app), "name": "two", '
            '"routing": Routing(hosts=["two.example.com"])})]}'
        )
    )
    assert [a.name for a in spec.applications] == ["hello", "two"]


def test_problem_text() -> None:
    assert (
        str(Problem("p.py", 3, "network.name", "bad", "'X'")) == "p.py:3: network.name = 'X': bad"
    )
    assert str(Problem("p.py", 0, "", "declares no EdgeNetwork")) == "p.py: declares no EdgeNetwork"
    assert str(Problem("p.py", 4, "a.sla", "wrong")) == "p.py:4: a.sla: wrong"


def test_network_and_app_errors_come_together(policy) -> None:
    """One load shows the network's problems and the apps' own problems."""
    with pytest.raises(SpecError) as caught:
        load(
            policy(
                controller='Controller(location="local")',
                distribution="Distribution(min=2, max=1)",
                sla="SLA(max_response_ms=200, users_per_instance=10, colour=1)",
            )
        )
    assert [(p.path, p.message.split(";")[0]) for p in caught.value.problems] == [
        ("network.controller.server_type", "required field is missing"),
        ("applications[hello].distribution", "min (2) is more than max (1)"),
        ("applications[hello].sla.colour", "unknown field"),
    ]


def test_objects_from_json_are_valid_and_equal() -> None:
    text = (
        '{"name": "n", "provider": {"kind": "local"}, "edgepoints": [{"name": "e", '
        '"region": "eu-central", "location": "local", "server_type": "local"}], '
        '"controller": {"location": "local", "server_type": "local"}, '
        '"pricing": {"cpu_second": "0", "memory_gb_second": "0", "network_gb": "0"}}'
    )
    net = EdgeNetwork.model_validate_json(text)
    assert net.is_valid
    assert EdgeNetwork.model_validate_json(net.model_dump_json()) == net
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EdgeNetwork.model_validate_json(text.replace('"name": "n"', '"name": "n", "x": 1'))


def test_application_lookup(policy) -> None:
    spec = load(policy())
    with pytest.raises(KeyError, match="no application 'nope'; have: hello"):
        spec.application("nope")


def test_a_half_built_edgepoint_still_has_its_location_checked(policy) -> None:
    """A field error in one edgepoint hides none of its other fields' problems."""
    file = policy(**{**HETZNER, "edgepoints": '[Edgepoint(name="fsn", region="eu-central", '
                     'location="fsn9", server_type="cx22", servers=0)]'})
    with pytest.raises(SpecError) as caught:
        load(file)
    found = sorted((p.path, p.message.split(";")[0]) for p in caught.value.problems)
    assert found == [("network.edgepoints[0].location", "not a hetzner location"),
                     ("network.edgepoints[0].servers", "Input should be greater than or equal to 1")]


def test_a_wrong_peak_window_hides_neither_the_locations_nor_the_apps_findings(policy) -> None:
    file = policy(**{**HETZNER,
                     "controller": 'Controller(location="nbg2", server_type="cx22")',
                     "pricing": 'Pricing(cpu_second="0", memory_gb_second="0", network_gb="0", '
                     'peak=PeakWindow(start="09:00", end="17:00", multiplier="0.5"))',
                     "distribution": 'Distribution(regions=["mars"])'})
    with pytest.raises(SpecError) as caught:
        load(file)
    paths = sorted(p.path for p in caught.value.problems)
    assert paths == ["applications[hello].distribution.regions[0]",
                     "network.controller.location", "network.pricing.peak.multiplier"]
