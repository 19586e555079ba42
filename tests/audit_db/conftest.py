"""Connections to the test database as the application role and as the owner, each its own
psycopg connection (autocommit), never with the test suite's audit purge option."""
from __future__ import annotations

import os

import pytest
from django.conf import settings

APP_PASSWORD = os.environ.get("GATEHOUSE_DB_APP_PASSWORD", "gatehouse_app")


def _require_postgresql():
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("database privileges and triggers need PostgreSQL (GATEHOUSE_DATABASE_URL); run with `make test`")


def _connect(user: str, password: str):
    import psycopg

    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, dbname=db["NAME"], user=user, password=password,
        autocommit=True, connect_timeout=10,
        # Bounded waits: a test that would block on a lock fails instead of hanging. No purge option.
        options="-c lock_timeout=10s -c statement_timeout=30s",
    )


@pytest.fixture
def app_role(transactional_db):
    _require_postgresql()
    return settings.GATEHOUSE_DB_APP_ROLE


@pytest.fixture
def as_app(app_role):
    import psycopg

    try:
        conn = _connect(app_role, APP_PASSWORD)
    except psycopg.OperationalError as exc:
        pytest.fail(f"cannot connect as {app_role!r} (deploy/test-services.sh creates it): {exc}")
    # The widest the application role ever gets, as a worker or the sequencer has it: every tenant's
    # rows under row-level security (gateway/dbscope.py), so what refuses here is privileges alone.
    conn.execute("SELECT set_config('gatehouse.tenant', '*', false)")
    yield conn
    conn.close()  # before the flush: it must not wait on this connection's locks


@pytest.fixture
def as_owner(transactional_db):
    _require_postgresql()
    db = settings.DATABASES["default"]
    conn = _connect(db["USER"], db["PASSWORD"])
    assert conn.execute("SELECT current_setting('gatehouse.audit_purge', true)").fetchone()[0] in (None, "")
    yield conn
    conn.close()
