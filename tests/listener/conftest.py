from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_test_without_tracebacks(no_tracebacks: None) -> None:
    """No listener test may make the listener log a traceback (tests/support/fixtures.py)."""
