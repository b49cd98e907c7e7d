"""The test suite's own guard: pytest-timeout is loaded and every test has a time limit, so a
hang (a deadlocked worker, a lost subprocess) fails in minutes instead of stalling CI."""

from __future__ import annotations

import pytest


def test_every_test_has_a_time_limit(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    limit = float(pytestconfig.getini("timeout"))
    assert 0 < limit <= 600
