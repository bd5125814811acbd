"""Test policy for the whole suite, written once.

Tests marked ``root``, ``criu``, ``haproxy``, ``browser`` or ``promtool`` skip, with the reason, on a machine where they
cannot run (not root, no working CRIU) — except under CI=true, where such a test
*fails*: CI runs as root and must exercise the real thing.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(item: pytest.Item) -> str | None:
    """Why ``item`` cannot run on this machine (None: it can)."""
    if item.get_closest_marker("root") and os.geteuid() != 0:
        return "needs root (namespaces, cgroups, CRIU)"
    if item.get_closest_marker("haproxy"):
        from edgeshot.edge._haproxy import find_haproxy
        if find_haproxy() is None:
            return "needs HAProxy (make system installs Debian's, as root)"
    if item.get_closest_marker("browser"):
        import importlib.util
        if not (shutil.which("chromium") and shutil.which("chromedriver")):
            return ("needs Debian's chromium and chromium-driver "
                    "(scripts/setup.d/50-chromium.sh installs them, as root)")
        if importlib.util.find_spec("selenium") is None:
            return "needs selenium (the dev extra: pip install -e '.[dev]')"
    if item.get_closest_marker("promtool") and not (shutil.which("promtool")
                                                     and shutil.which("prometheus")):
        return ("needs promtool and prometheus (Debian's prometheus package: "
                "scripts/setup.d/60-prometheus.sh "
                "installs it, as root)")
    if item.get_closest_marker("git") and not shutil.which("git"):
        return "needs git (scripts/setup.d/10-base.sh installs it, as root)"
    if item.get_closest_marker("criu"):
        from edgeshot.agent import _criu
        st = _criu.status()
        if not st.usable:
            return f"needs a working CRIU: {st.reason}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: needs a headless Chromium (and selenium); must run under CI=true")
    config.addinivalue_line(
        "markers", "promtool: needs Prometheus's promtool; must run under CI=true")
    config.addinivalue_line("markers", "git: needs git; must run under CI=true")


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = unavailable(item)
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true: this test must run, but it {reason}", pytrace=False)
        pytest.skip(reason)
