"""site.yml over real SSH on throwaway servers: installs everything, idempotently."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.root


def test_site_installs_everything(first_run):
    r = first_run.result
    assert r.ok, r.summary()
