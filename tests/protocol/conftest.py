"""Shared fixtures for the in-memory protocol tests."""

import pytest
from twisted.internet.task import Clock

from mailhost.testing import make_clock


@pytest.fixture
def clock() -> Clock:
    """A fake reactor clock at 2013-09-01T23:59Z, advanced by the tests."""
    return make_clock()
