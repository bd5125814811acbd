"""Fixtures of the network's tests (controller, global dispatcher, local network).

The skip/fail policy is the suite's (tests/conftest.py). The ``haproxy`` marker is
registered here until the suite-wide policy knows it: under CI=true HAProxy is
installed by `make system`, and these tests run.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "haproxy: needs HAProxy (the data path); must run under CI=true")
