"""Fixtures for the tracking tests (the fakes live in ``tracking_fakes.py``)."""
import pytest

from tracking_fakes import FakeAgent


@pytest.fixture
def fake_agent() -> FakeAgent:
    return FakeAgent()
