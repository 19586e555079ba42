"""Connections to the test database as the application role and as the owner, each its own
psycopg connection (autocommit), never with the test suite's audit purge option (tests/dbroles.py)."""
from __future__ import annotations

import pytest
from django.conf import settings

from tests.dbroles import connect_as_app, connect_as_owner, require_postgresql


@pytest.fixture
def app_role(transactional_db):
    require_postgresql("database privileges and triggers need")
    return settings.GATEHOUSE_DB_APP_ROLE


@pytest.fixture
def as_app(app_role):
    conn = connect_as_app()
    # The widest the application role ever gets, as a worker or the sequencer has it: every tenant's
    # rows under row-level security (gateway/dbscope.py), so what refuses here is privileges alone.
    conn.execute("SELECT set_config('gatehouse.tenant', '*', false)")
    yield conn
    conn.close()  # before the flush: it must not wait on this connection's locks


@pytest.fixture
def as_owner(transactional_db):
    require_postgresql("database privileges and triggers need")
    conn = connect_as_owner()
    assert conn.execute("SELECT current_setting('gatehouse.audit_purge', true)").fetchone()[0] in (None, "")
    yield conn
    conn.close()
