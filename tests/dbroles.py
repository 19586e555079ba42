"""Connections to the test database as one of its roles (the application role, the owner): each
its own psycopg connection in autocommit, outside Django, with bounded waits (a test that would
block on a lock fails instead of hanging) and never with the test suite's audit purge option."""
from __future__ import annotations

import os

import pytest
from django.conf import settings

#: The application role's password (deploy/test-services.sh creates the role with it).
APP_PASSWORD = os.environ.get("GATEHOUSE_DB_APP_PASSWORD", "gatehouse_app")


def require_postgresql(what: str) -> None:
    """Skip unless the tests run on PostgreSQL; ``what`` says what needs it."""
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip(f"{what} PostgreSQL (GATEHOUSE_DATABASE_URL); run with `make test`")


def connect(user: str, password: str):
    import psycopg

    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, dbname=db["NAME"], user=user, password=password,
        autocommit=True, connect_timeout=10, options="-c lock_timeout=10s -c statement_timeout=30s",
    )


def connect_as_app():
    """A connection as the application role (``GATEHOUSE_DB_APP_ROLE``); the test fails, naming the
    role, if it cannot log in."""
    import psycopg

    role = settings.GATEHOUSE_DB_APP_ROLE
    try:
        return connect(role, APP_PASSWORD)
    except psycopg.OperationalError as exc:
        pytest.fail(f"cannot connect as {role!r} (deploy/test-services.sh creates it): {exc}")


def connect_as_owner():
    """A connection as the role that owns the tables (the test suite's own, from the settings)."""
    db = settings.DATABASES["default"]
    return connect(db["USER"], db["PASSWORD"])
