"""Properties of the spec, checked on generated input.

- A valid spec survives JSON unchanged: Spec.model_validate_json(spec.model_dump_json()) == spec.
- Whatever a policy file contains (random bytes, random text, random Python,
  random values in a valid template), load() returns a Spec or raises
  SpecError with located problems: never any other exception, and never an
  internal failure of the checks.
- patterns_meet agrees with brute force over a small alphabet.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeshot.spec import (
    AWS,
    CATALOGS,
    REGIONS,
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    DigitalOcean,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    LoadTest,
    Local,
    Money,
    Owner,
    PassCriteria,
    PeakWindow,
    Pricing,
    Region,
    Resources,
    Route,
    Routing,
    Source,
    Spec,
    SpecError,
    Tier,
    WarmupRequest,
    WeightedPath,
    load,
)
from edgeshot.spec import (
    HealthCheck as Health,
)
from edgeshot.spec._routes import METHODS, patterns_meet, to_regex

from .conftest import TEMPLATE_FIELDS, write_policy

# Generated policy files may well be odd Python ("perhaps you missed a comma?").
pytestmark = [
    pytest.mark.filterwarnings("ignore::SyntaxWarning"),
    pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

# EDGESHOT_SPEC_EXAMPLES=5000 for a long hunt; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("EDGESHOT_SPEC_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- small valid building blocks ----------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
versions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,8}", fullmatch=True)
currencies = st.sampled_from(["EUR", "USD", "GBP", "CHF"])
prices = st.decimals(min_value=0, max_value=Decimal("10"), places=7)
amounts = st.decimals(min_value=0, max_value=Decimal("100000"), places=2)
text = st.text(max_size=12)
hosts = st.from_regex(r"(\*\.)?[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n != "PORT"
)
methods = st.sampled_from([*METHODS, "*"])
segments = st.sampled_from(["a", "b", "img", "v1", "*", "?", ".png", "x-y", "%20"])
paths = (
    st.lists(segments, max_size=4).map(lambda s: "/" + "/".join(s)).filter(lambda p: "**" not in p)
)
prefixes = paths.filter(lambda p: "*" not in p and "?" not in p)
zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])
urls = st.sampled_from(["https://origin.example.com/", "http://10.0.0.1:8080/app"])


def unique_by_name(items: st.SearchStrategy, min_size: int = 0, max_size: int = 3):
    return st.lists(items, min_size=min_size, max_size=max_size, unique_by=lambda o: o.name)


money = st.builds(Money, amount=amounts, currency=currencies)
routes = st.builds(Route, method=methods, path=paths)
origin_routes = st.builds(Route, method=methods, path=paths, transactional=st.booleans())


@st.composite
def peaks(draw) -> PeakWindow:
    start = draw(st.times())
    return PeakWindow(
        start=start,
        end=draw(st.times().filter(lambda t: t != start)),
        multiplier=draw(st.decimals(min_value=1, max_value=5, places=2)),
        timezone=draw(zones),
        weekdays=draw(
            st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), max_size=7)
        ),
    )


pricings = st.builds(
    Pricing,
    currency=currencies,
    cpu_second=prices,
    memory_gb_second=prices,
    network_gb=prices,
    disk_io_gb=prices,
    storage_gb_hour=prices,
    peak=st.none() | peaks(),
)
custom_regions = st.builds(
    Region,
    name=names.map(lambda n: f"x-{n}"[:63]),
    latitude=st.floats(-90, 90),
    longitude=st.floats(-180, 180),
    label=text,
)


@st.composite
def networks(draw) -> EdgeNetwork:
    kind = draw(st.sampled_from(sorted(CATALOGS)))
    catalog = CATALOGS[kind]
    provider = {"local": Local, "hetzner": Hetzner, "aws": AWS, "digitalocean": DigitalOcean}[
        kind
    ]()
    locations, types = sorted(catalog.locations), sorted(catalog.server_types)
    edgepoints = draw(
        unique_by_name(
            st.builds(
                Edgepoint,
                name=names,
                region=st.sampled_from(sorted(REGIONS)),
                location=st.sampled_from(locations),
                servers=st.integers(1, 4),
                server_type=st.sampled_from(types),
                slots_per_server=st.integers(1, 64),
            ),
            min_size=1,
        )
    )
    return EdgeNetwork(
        name=draw(names),
        provider=provider,
        edgepoints=edgepoints,
        controller=Controller(
            location=draw(st.sampled_from(locations)), server_type=draw(st.sampled_from(types))
        ),
        pricing=draw(pricings),
        origin=draw(st.none() | urls),
        regions=draw(unique_by_name(custom_regions)),
        operators=draw(st.lists(st.sampled_from(["10.0.0.0/8", "192.168.1.0/24", "::1/128"]))),
        slot_network=draw(st.sampled_from(["10.64.0.0/12", "172.16.0.0/16"])),
    )


tiers = st.builds(
    Tier,
    name=names,
    command=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3).map(tuple),
    env=st.dictionaries(env_names, text, max_size=3),
    health=st.none() | st.builds(Health, path=paths, timeout_s=st.floats(0.1, 10)),
    resources=st.builds(
        Resources,
        cpu=st.decimals(min_value=Decimal("0.01"), max_value=64, places=2),
        memory_mb=st.integers(16, 4096),
    ),
)


@st.composite
def tier_sets(draw) -> list[Tier]:
    chosen = draw(unique_by_name(tiers, min_size=1))
    entry = draw(st.integers(0, len(chosen) - 1))
    return [
        t.model_copy(update={"port": 8000 + i, "entry": i == entry}) for i, t in enumerate(chosen)
    ]


@st.composite
def distributions(draw) -> Distribution:
    low = draw(st.integers(0, 5))
    high = draw(st.integers(max(low, 1), 10))
    where = draw(st.sampled_from(["regions", "edgepoints", "none"]))
    return Distribution(
        min=low,
        max=high,
        regions=draw(st.lists(names, max_size=2)) if where == "regions" else (),
        edgepoints=draw(st.lists(names, max_size=2)) if where == "edgepoints" else (),
        global_max=draw(st.none() | st.integers(1, 100)),
        max_edgepoints=draw(st.none() | st.integers(1, 10)),
    )


slas = st.builds(
    SLA,
    max_response_ms=st.integers(1, 10_000),
    percentile=st.floats(50, 100, exclude_max=True),
    users_per_instance=st.integers(1, 1000),
    scale_down_below=st.floats(0, 1, exclude_max=True),
    idle_s=st.integers(0, 3600),
    warm_pool=st.integers(0, 5),
    panic_factor=st.floats(1, 10, exclude_min=True),
)
load_tests = st.builds(
    LoadTest,
    users=st.integers(1, 1000),
    spawn_rate=st.floats(0.1, 100),
    duration_s=st.integers(1, 600),
    regions=st.lists(names, max_size=2).map(tuple),
    paths=st.lists(
        st.builds(WeightedPath, method=methods, path=paths, weight=st.integers(1, 10)),
        min_size=1,
        max_size=3,
    ),
    criteria=st.builds(
        PassCriteria,
        max_response_ms=st.none() | st.integers(1, 10_000),
        max_error_rate=st.floats(0, 1),
        min_users_per_instance=st.none() | st.integers(1, 100),
    ),
)
routings = st.builds(
    Routing,
    hosts=st.lists(hosts, min_size=1, max_size=2),
    path_prefix=st.none() | prefixes,
) | st.builds(Routing, path_prefix=prefixes)
applications = st.builds(
    Application,
    name=names,
    version=versions,
    owner=st.builds(Owner, id=names, name=text, organisation=st.none() | text),
    vendor=text,
    priority=st.integers(0, 100),
    routing=routings,
    source=st.builds(Source, path=text, install=st.none() | text, trusted=st.booleans()),
    tiers=tier_sets(),
    warmup=st.lists(
        st.builds(
            WarmupRequest,
            method=methods,
            path=paths,
            count=st.integers(1, 5),
            body=st.none() | text,
            headers=st.dictionaries(st.text(string.ascii_letters, min_size=1), text, max_size=2),
        ),
        max_size=2,
    ),
    cleave=st.builds(
        Cleave,
        edge=st.lists(routes, max_size=3),
        origin=st.lists(origin_routes, max_size=3),
        origin_url=st.none() | urls,
        default=st.sampled_from(["edge", "origin"]),
        affinity=st.booleans(),
    ),
    distribution=distributions(),
    sla=slas,
    budget=st.builds(Budget, monthly=money, warn_at=st.floats(0.01, 0.99)),
    load_test=st.none() | load_tests,
)
specs = st.builds(
    Spec,
    network=networks(),
    applications=st.lists(applications, max_size=3).map(tuple),
    base_dir=st.sampled_from([".", "/srv/policies", "examples/shop"]),
)


@settings(SETTINGS, max_examples=max(EXAMPLES // 4, 10))  # whole specs are slow to generate
@given(specs)
def test_spec_json_round_trip(spec: Spec) -> None:
    text = spec.model_dump_json()
    again = Spec.model_validate_json(text)
    assert again == spec
    assert again.model_dump_json() == text


@settings(SETTINGS, max_examples=max(EXAMPLES // 3, 10))
@given(applications)
def test_application_json_round_trip(app: Application) -> None:
    assert Application.model_validate_json(app.model_dump_json()) == app
    assert Application.model_validate(app.model_dump()) == app


def test_loaded_spec_json_round_trip(policy) -> None:
    spec = load(policy())
    assert Spec.model_validate_json(spec.model_dump_json()) == spec


# --- malformed policy files -------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("policies")


_serial = itertools.count()


def load_outcome(path: Path) -> Spec | SpecError:
    """load(), which may only return a Spec or raise SpecError with sound problems."""
    try:
        spec = load(path)
    except SpecError as exc:
        assert exc.problems, "a SpecError names at least one problem"
        for p in exc.problems:
            assert Path(p.file).resolve() == path.resolve(), str(p)
            assert isinstance(p.line, int) and p.line >= 0, str(p)
            assert p.message, str(p)
            assert not p.message.startswith("could not be checked"), str(p)
        assert str(exc)
        return exc
    assert isinstance(spec, Spec)
    assert Spec.model_validate_json(spec.model_dump_json()) == spec
    return spec


def fresh(scratch: Path) -> Path:
    return scratch / f"p{next(_serial)}.py"


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(scratch: Path, data: bytes) -> None:
    path = fresh(scratch)
    path.write_bytes(data)
    assert isinstance(load_outcome(path), SpecError)


@SETTINGS
@given(st.text(max_size=400))
def test_random_text(scratch: Path, data: str) -> None:
    path = fresh(scratch)
    path.write_text(data, encoding="utf-8", errors="surrogatepass")
    assert isinstance(load_outcome(path), SpecError)


TOKENS = [
    "from edgeshot.spec import *\n",
    "network",
    "app",
    "EdgeNetwork",
    "Application",
    "Distribution",
    "Local()",
    "Tier",
    "(",
    ")",
    "[",
    "]",
    "=",
    ",",
    ":",
    ".",
    "**",
    "1",
    "-1",
    "'x'",
    "None",
    "min=",
    "max=",
    "name=",
    "\n",
    "    ",
    "def f():\n    ",
    "raise",
    "lambda:",
    "import os",
    "#",
    '"""',
    "\\",
]


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_random_token_soup(scratch: Path, tokens: list[str]) -> None:
    path = fresh(scratch)
    path.write_text(" ".join(tokens))
    assert isinstance(load_outcome(path), SpecError)


# Random Python expressions, built from the spec's own vocabulary.

CLASSES = [
    "Application",
    "Budget",
    "Cleave",
    "Controller",
    "Distribution",
    "EdgeNetwork",
    "Edgepoint",
    "HealthCheck",
    "Hetzner",
    "LoadTest",
    "Local",
    "Money",
    "Owner",
    "PassCriteria",
    "PeakWindow",
    "Pricing",
    "Region",
    "Resources",
    "Route",
    "Routing",
    "SLA",
    "Source",
    "Tier",
    "WarmupRequest",
    "WeightedPath",
]
FIELDS = sorted(
    {
        name
        for cls in (
            Application,
            Cleave,
            Distribution,
            EdgeNetwork,
            Edgepoint,
            LoadTest,
            PeakWindow,
            Pricing,
            Route,
            Routing,
            SLA,
            Tier,
        )
        for name in cls.model_fields
    }
    | {"bogus", "kind"}
)
STRINGS = [
    "",
    "x",
    "hello",
    "eu-central",
    "mars",
    "ep1",
    "local",
    "fsn1",
    "cx22",
    "GET /a*",
    "/a?",
    "* /x",
    "50 EUR",
    "1e999999 EUR",
    "-1 USD",
    "NaN",
    "9e999999",
    "1e30",
    "10.0.0.0/8",
    "https://origin.example.com",
    "Europe/Berlin",
    "18:00",
    "python app.py",
    "'",
    "\x00",
    "é",
]

leaves = st.one_of(
    st.integers(-1000, 1000).map(repr),
    st.sampled_from([10**30, 2**63, -(10**20)]).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"float({str(f)!r})"),
    st.sampled_from(STRINGS).map(repr),
    st.text(max_size=6).map(repr),
    st.sampled_from(["None", "True", "False", "network", "app", "[]", "{}", "()", "..."]),
)


def _call(args: list[tuple[str, str]], cls: str) -> str:
    return f"{cls}({', '.join(f'{k}={v}' for k, v in args)})"


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(
            _call,
            st.lists(
                st.tuples(st.sampled_from(FIELDS), inner), max_size=4, unique_by=lambda t: t[0]
            ),
            st.sampled_from(CLASSES),
        ),
        st.lists(inner, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k!r}: {v}" for k, v in d.items()) + "}"
        ),
        st.tuples(inner, st.sampled_from(["+", "-", "or", "and", "==", "if True else"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(inner, st.sampled_from(["name", "edgepoints", "tiers", "x", "__class__"])).map(
            lambda t: f"({t[0]}).{t[1]}"
        ),
        st.tuples(inner, inner).map(lambda t: f"({t[0]})[{t[1]}]"),
    )


expressions = st.recursive(leaves, _compound, max_leaves=12)


@SETTINGS
@given(st.lists(expressions, min_size=1, max_size=4))
def test_random_expressions_after_a_valid_template(scratch: Path, exprs: list[str]) -> None:
    extra = "\n".join(f"x{i} = {e}" for i, e in enumerate(exprs))
    load_outcome(write_policy(scratch, extra=extra))


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(sorted(set(TEMPLATE_FIELDS) - {"extra"})),
        expressions,
        min_size=1,
        max_size=3,
    )
)
def test_random_expressions_in_template_fields(scratch: Path, fields: dict[str, str]) -> None:
    load_outcome(write_policy(scratch, **fields))


# Plain values (what a JSON or YAML user might write) in every field of every object.


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from(STRINGS),
    _containers,
    max_leaves=6,
)

# (template field, how to write a value into one argument of it)
SLOTS = [
    (
        "edgepoints",
        '[Edgepoint(name="ep1", region="eu-central", location="local", '
        'server_type="local", {arg}={value})]',
    ),
    ("controller", 'Controller(location="local", server_type="local", {arg}={value})'),
    ("pricing", 'Pricing(cpu_second="0", memory_gb_second="0", network_gb="0", {arg}={value})'),
    ("routing", 'Routing(hosts=["hello.example.com"], {arg}={value})'),
    ("tiers", '[Tier(name="web", command="python app.py", {arg}={value})]'),
    ("cleave", "Cleave({arg}={value})"),
    ("distribution", "Distribution({arg}={value})"),
    ("sla", "SLA(max_response_ms=200, users_per_instance=10, {arg}={value})"),
    ("budget", 'Budget(monthly="50 EUR", {arg}={value})'),
]
ARGS = {
    "edgepoints": ["name", "region", "location", "servers", "server_type", "slots_per_server"],
    "controller": ["server_type"],
    "pricing": ["currency", "network_gb", "disk_io_gb", "storage_gb_hour", "peak"],
    "routing": ["path_prefix"],
    "tiers": ["port", "env", "entry", "health", "resources", "bogus"],
    "cleave": ["edge", "origin", "origin_url", "default", "affinity"],
    "distribution": ["regions", "edgepoints", "min", "max", "global_max", "max_edgepoints"],
    "sla": ["percentile", "scale_down_below", "idle_s", "warm_pool", "panic_factor"],
    "budget": ["warn_at"],
}


@st.composite
def slot_values(draw) -> dict[str, str]:
    field, pattern = draw(st.sampled_from(SLOTS))
    arg = draw(st.sampled_from(ARGS[field]))
    value = draw(plain.map(repr) | expressions)
    return {field: pattern.format(arg=arg, value=value)}


@SETTINGS
@given(st.lists(slot_values(), min_size=1, max_size=3))
def test_random_values_in_object_fields(scratch: Path, subs: list[dict[str, str]]) -> None:
    fields: dict[str, str] = {}
    for sub in subs:
        fields.update(sub)
    load_outcome(write_policy(scratch, **fields))


@SETTINGS
@given(st.sampled_from(sorted(set(TEMPLATE_FIELDS) - {"extra"})), plain)
def test_random_plain_values_in_template_fields(scratch: Path, field: str, value: object) -> None:
    load_outcome(write_policy(scratch, **{field: repr(value)}))


# --- patterns_meet against brute force ---------------------------------------------

globs = (
    st.lists(st.sampled_from("ab*?"), max_size=3)
    .map(lambda s: "/" + "".join(s))
    .filter(lambda p: "**" not in p)
)


@settings(SETTINGS, max_examples=EXAMPLES * 2)
@given(globs, globs)
def test_patterns_meet_agrees_with_brute_force(a: str, b: str) -> None:
    ra, rb = re.compile(to_regex(a)), re.compile(to_regex(b))
    # A common path, if any, needs at most one character per non-'*' in either pattern.
    bound = sum(c != "*" for c in a + b)
    candidates = (
        "/" + "".join(chars)
        for n in range(bound + 1)
        for chars in itertools.product("abz", repeat=n)
    )
    brute = any(ra.match(s) and rb.match(s) for s in candidates)
    assert patterns_meet(a, b) is brute
    assert patterns_meet(b, a) is brute
