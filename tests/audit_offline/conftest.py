"""Fixtures of the offline audit tests: plain Python, no Django, no database."""
from __future__ import annotations

import pytest

from .logfactory import SyntheticLog


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    """100 entries across three tenants, checkpoints every 8 entries, key rotated after entry 50."""
    return SyntheticLog(100)
