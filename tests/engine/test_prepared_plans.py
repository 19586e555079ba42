"""Prepared statements' plans are made again as the connection's executions double
(gateway/pgprepared.py): a generic plan made while a table was nearly empty does not stay."""
from __future__ import annotations

import pytest
from django.db import connection

from gateway import pgprepared
from gateway.pgprepared import prepared_cursor

pytestmark = pytest.mark.django_db(transaction=True)

QUERY = "SELECT count(*) FROM plan_probe p JOIN unnest($1::bigint[]) AS k(id) ON p.id = k.id"


def _run(ids: list[int]) -> int:
    with prepared_cursor(connection, dollar_placeholders=True) as cursor:
        cursor.execute(QUERY, [ids])
        return cursor.fetchone()[0]


def _plan() -> tuple[str, int]:
    """The plan the prepared statement uses now (EXPLAIN EXECUTE takes the same cached plan as an
    execution), and how many times PostgreSQL used a generic plan of it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, generic_plans FROM pg_prepared_statements WHERE statement = %s", [QUERY])
        [(name, generic)] = cursor.fetchall()
        cursor.execute(f"EXPLAIN EXECUTE {name}('{{1,2}}')")
        return "\n".join(row[0] for row in cursor.fetchall()), generic


@pytest.fixture
def probe_table():
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements and their plans are PostgreSQL's")
    connection.close()  # a new session: its prepared executions start at zero
    with connection.cursor() as cursor:
        # The generic plan from the first execution on, as PostgreSQL's own choice makes it after five
        # custom plans in the worker's statements (seen there: pg_prepared_statements.generic_plans).
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("CREATE TEMPORARY TABLE plan_probe (id bigserial PRIMARY KEY, pad text NOT NULL)")
        cursor.execute("INSERT INTO plan_probe (pad) SELECT repeat('x', 100) FROM generate_series(1, 5)")
    yield
    connection.close()  # the temporary table and the prepared statement go with the session


def test_a_plan_made_on_a_nearly_empty_table_is_made_again_after_it_grew(probe_table):
    for _ in range(8):  # one generic plan, made on five rows
        assert _run([1, 2]) == 2
    plan, generic = _plan()
    assert generic >= 1
    assert "Seq Scan on plan_probe" in plan, plan
    with connection.cursor() as cursor:  # the table grows; nothing updates its statistics
        cursor.execute("INSERT INTO plan_probe (pad) SELECT repeat('x', 100) FROM generate_series(1, 50000)")
    while pgprepared._executions[connection.connection] < pgprepared.REPLAN_FROM - 1:
        assert _run([1, 2]) == 2
    plan, _ = _plan()
    assert "Seq Scan on plan_probe" in plan, plan  # not yet: the plan is kept between the points
    assert _run([1, 2]) == 2  # execution REPLAN_FROM drops the connection's plans first
    plan, _ = _plan()
    assert "Seq Scan" not in plan and "plan_probe_pkey" in plan, plan
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement = %s", [QUERY])
        assert cursor.fetchone()[0] == 1  # the same prepared statement, planned again


def test_plans_are_made_again_at_each_doubling_from_replan_from_to_replan_until():
    low, high = pgprepared.REPLAN_FROM, pgprepared.REPLAN_UNTIL
    assert [n for n in range(1, 8 * low) if pgprepared.replan_due(n)] == [low, 2 * low, 4 * low]
    powers = [1 << k for k in range(64) if low <= 1 << k <= high]
    assert powers[0] == low and powers[-1] == high
    assert all(pgprepared.replan_due(n) for n in powers)
    assert not any(pgprepared.replan_due(n) for n in (high - 1, high + 1, 2 * high, 4 * high, 3 * low))
