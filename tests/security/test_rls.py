"""Row-level security on the tenant-owned tables (gateway/rls.py, gateway/dbscope.py): the
database's own wall between tenants, proved as the application role on a separate connection,
and through the web request path with that role behind the default connection.

The data of two tenants is made by the real services (run_submit, task_execute, gate_decide,
audit_append, the sequencer) as the owner, which row-level security exempts by design.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from psycopg import errors, sql

from gateway import dbscope
from gateway.rls import EXCLUDED, FUNCTION, POLICY, apply_row_security, tenant_owned_tables

from tests.dbroles import APP_PASSWORD, connect_as_app, connect_as_owner, require_postgresql
from tests.engine.driver import workflow

pytestmark = pytest.mark.django_db(transaction=True)

WORKFLOW = workflow(
    {"id": "make", "run": "echo hi > out.txt", "outputs": [{"name": "out", "path": "out.txt"}]},
    {"id": "check", "type": "gate", "needs": ["make"], "shows": ["make/out"], "approvers": ["analyst"]},
    name="walls",
)
# Tables the world fixture fills for both tenants: the behaviour below is proved on each of them.
FILLED = {
    "gateway_run", "gateway_taskinstance", "gateway_tasktransition", "gateway_artefact",
    "approvals_gate", "approvals_decision", "approvals_gateeligibility",
    "audit_auditentry", "audit_auditleaf", "audit_audithead",
}


def _scope(conn, value: str) -> None:
    conn.execute("SELECT set_config('gatehouse.tenant', %s, false)", [value])


def _project_tenant_tables() -> set[str]:
    """Found here independently of gateway.rls: every model of the project's own apps whose table
    has a tenant_id column. A new tenant-owned table without the policy fails the tests below."""
    base = Path(django_settings.BASE_DIR).resolve()
    tables = set()
    for model in apps.get_models():
        path = Path(model._meta.app_config.path).resolve()
        if not path.is_relative_to(base) or "site-packages" in path.parts:
            continue
        if model._meta.label in EXCLUDED or not model._meta.managed or model._meta.proxy:
            continue
        if any(getattr(f, "column", None) == "tenant_id" for f in model._meta.concrete_fields):
            tables.add(model._meta.db_table)
    return tables


def _ident(table: str):
    return sql.Identifier(table)


def _count(conn, table: str, where: str = "", params=()) -> int:
    query = sql.SQL("SELECT count(*) FROM {} ").format(_ident(table)) + sql.SQL(where)
    return conn.execute(query, list(params)).fetchone()[0]


def _digest(conn, table: str, tenant_id) -> str:
    """A fingerprint of every row of one tenant (NULL: the platform rows), as the owner sees them."""
    where = "WHERE tenant_id IS NULL" if tenant_id is None else "WHERE tenant_id = %s"
    rows = conn.execute(
        sql.SQL("SELECT to_jsonb(t)::text FROM {} t " + where + " ORDER BY 1").format(_ident(table)),
        [] if tenant_id is None else [tenant_id],
    ).fetchall()
    return hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest() + f":{len(rows)}"


@pytest.fixture
def app_role(transactional_db):
    require_postgresql("row-level security needs")
    return django_settings.GATEHOUSE_DB_APP_ROLE


@pytest.fixture
def as_app(app_role):
    conn = connect_as_app()
    yield conn
    conn.close()


@pytest.fixture
def as_owner(app_role):
    conn = connect_as_owner()
    yield conn
    conn.close()


@pytest.fixture
def world(app_role, recording, settings, tmp_path, make_tenant, make_member):
    """Two tenants, each with a run whose task ran (transitions, artefacts) and whose gate was
    decided (eligibility, decision), audit entries placed in the log (leaves, heads), and one
    platform entry of no tenant (a failed login)."""
    from audit.keys import forget_signer
    from audit.sequencer import checkpoint_now
    from audit.services import audit_append
    from audit.witness import _witness
    from approvals.models import Gate
    from approvals.services import gate_decide
    from gateway.models import TaskInstance
    from gateway.services import run_submit
    from gateway.worker import task_execute

    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "witness")}
    forget_signer()
    _witness.cache_clear()
    world = {}
    for name in ("a", "b"):
        tenant = make_tenant(f"tenant-{name}")
        author = make_member(tenant, "author")
        analyst = make_member(tenant, "analyst")
        auditor = make_member(tenant, "auditor")
        run = run_submit(tenant=tenant, actor=author, source=WORKFLOW)
        make = TaskInstance.objects.get(run=run, key="make")
        assert task_execute(make.id, make.attempt) == "succeeded"
        gate = Gate.objects.get(run=run)
        gate_decide(gate=gate, actor=analyst, option="confirm")
        world[name] = {"tenant": tenant, "author": author, "analyst": analyst, "auditor": auditor, "run": run}
    world["platform_auditor"] = make_member(world["a"]["tenant"], "platform_auditor")
    audit_append(event="auth.login_failed", outcome="denied", error_code="bad_credentials",
                 secrets={"username": "nobody"})
    checkpoint_now()
    yield world
    forget_signer()
    _witness.cache_clear()


@pytest.fixture
def filled(world, as_owner):
    """The tenant-owned tables with rows of both tenants, and the ids of the two tenants."""
    a, b = world["a"]["tenant"].id, world["b"]["tenant"].id
    tables = [t for t in tenant_owned_tables()
              if _count(as_owner, t, "WHERE tenant_id = %s", [a]) and _count(as_owner, t, "WHERE tenant_id = %s", [b])]
    assert FILLED <= set(tables), f"the world fixture no longer fills {sorted(FILLED - set(tables))}"
    return tables, a, b


# --------------------------------------------------------------------------- the roles and the tables


def test_the_app_role_is_neither_owner_superuser_nor_bypassrls(app_role, as_owner):
    row = as_owner.execute(
        "SELECT oid, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s", [app_role]
    ).fetchone()
    assert row is not None, f"role {app_role} missing (deploy/test-services.sh creates it)"
    oid, superuser, bypassrls, createrole, createdb = row
    assert (superuser, bypassrls, createrole, createdb) == (False, False, False, False)
    assert app_role != django_settings.DATABASES["default"]["USER"]
    owned = as_owner.execute(
        "SELECT relname FROM pg_class WHERE relowner = %s UNION ALL SELECT nspname FROM pg_namespace "
        "WHERE nspowner = %s UNION ALL SELECT proname FROM pg_proc WHERE proowner = %s", [oid, oid, oid]
    ).fetchall()
    assert owned == []
    # Nor a member of a role that owns a table, nor able to create objects (a function shadowing
    # the policy's, a table of its own) in the schema.
    owners = {r[0] for r in as_owner.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    ).fetchall()}
    for owner in owners:
        assert as_owner.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [app_role, owner]).fetchone()[0] is False
    assert as_owner.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [app_role]).fetchone()[0] is False


def test_every_tenant_owned_table_has_row_security_and_only_the_tenant_policy(app_role, as_owner):
    tables = _project_tenant_tables()
    assert {"gateway_run", "approvals_gate", "audit_auditentry"} <= tables
    assert tables == set(tenant_owned_tables())
    # An exclusion is a decision someone has to make and explain, not a default.
    assert set(EXCLUDED) == {"gateway.Membership"} and all(EXCLUDED.values())
    state = {r[0]: r[1:] for r in as_owner.execute(
        "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%s)", [sorted(tables)]
    ).fetchall()}
    assert set(state) == tables, f"tables missing from the database: {sorted(tables - set(state))}"
    policies = {}
    for table, name, permissive, roles, cmd, qual, check in as_owner.execute(
        "SELECT tablename, policyname, permissive, roles::text[], cmd, qual, with_check FROM pg_policies "
        "WHERE schemaname = 'public' AND tablename = ANY(%s)", [sorted(tables)]
    ).fetchall():
        policies.setdefault(table, []).append((name, permissive, roles, cmd, qual, check))
    expected = f"{FUNCTION}(tenant_id)"
    for table in sorted(tables):
        enabled, forced, owner = state[table]
        assert enabled, f"{table}: row-level security is not enabled"
        assert not forced, f"{table}: FORCE would subject the owner (migrations, flush) to a policy it lacks"
        assert owner != app_role
        assert policies.get(table) == [(POLICY, "PERMISSIVE", [app_role], "ALL", expected, expected)], table


def test_applying_again_changes_nothing_and_repairs_what_was_undone(app_role, as_owner):
    from django.db import connection

    def oids():
        return as_owner.execute(
            "SELECT (SELECT array_agg(oid ORDER BY oid) FROM pg_policy WHERE polname = %s), "
            "(SELECT oid FROM pg_proc WHERE proname = %s)", [POLICY, FUNCTION]
        ).fetchone()

    before = oids()
    apply_row_security(connection, app_role)
    assert oids() == before  # nothing dropped and created again
    as_owner.execute("ALTER TABLE gateway_run DISABLE ROW LEVEL SECURITY")
    as_owner.execute(sql.SQL("DROP POLICY {} ON gateway_run").format(sql.Identifier(POLICY)))
    as_owner.execute(sql.SQL("ALTER POLICY {} ON approvals_gate USING (true) WITH CHECK (true)")
                     .format(sql.Identifier(POLICY)))
    apply_row_security(connection, app_role)
    assert as_owner.execute("SELECT relrowsecurity FROM pg_class WHERE relname = 'gateway_run'").fetchone()[0]
    quals = dict(as_owner.execute(
        "SELECT tablename, qual FROM pg_policies WHERE policyname = %s AND tablename IN ('gateway_run', 'approvals_gate')",
        [POLICY],
    ).fetchall())
    assert quals == {"gateway_run": f"{FUNCTION}(tenant_id)", "approvals_gate": f"{FUNCTION}(tenant_id)"}


# --------------------------------------------------------------------------- the application role's view


def test_bound_to_one_tenant_the_other_tenants_rows_are_invisible(filled, as_app, as_owner):
    tables, a, b = filled
    _scope(as_app, str(a))
    for table in tables:
        assert _count(as_app, table, "WHERE tenant_id = %s", [b]) == 0, table
        assert _count(as_app, table, "WHERE tenant_id IS NULL") == 0, table
        # Everything it sees is A's, and all of A's: the wall is not a filter the query chose.
        assert _count(as_app, table) == _count(as_owner, table, "WHERE tenant_id = %s", [a]), table
    # A join does not reach across either: the other tenant's tasks through its run id.
    run_b = as_owner.execute("SELECT id FROM gateway_run WHERE tenant_id = %s", [b]).fetchone()[0]
    assert as_app.execute("SELECT count(*) FROM gateway_taskinstance WHERE run_id = %s", [run_b]).fetchone()[0] == 0


def test_bound_to_one_tenant_update_and_delete_touch_none_of_the_others_rows(filled, as_app, as_owner, app_role):
    tables, a, b = filled
    _scope(as_app, str(a))
    for table in tables:
        before = _digest(as_owner, table, b)
        writable = as_owner.execute("SELECT has_table_privilege(%s, %s, 'UPDATE')", [app_role, table]).fetchone()[0]
        if writable:
            touched = as_app.execute(sql.SQL("UPDATE {} SET tenant_id = tenant_id WHERE tenant_id = %s")
                                     .format(_ident(table)), [b]).rowcount
            assert touched == 0, table
            # With no WHERE at all, only A's rows are touched.
            everything = as_app.execute(sql.SQL("UPDATE {} SET tenant_id = tenant_id").format(_ident(table))).rowcount
            assert everything == _count(as_owner, table, "WHERE tenant_id = %s", [a]), table
            deleted = as_app.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(_ident(table)), [b]).rowcount
            assert deleted == 0, table
        else:  # the insert-only log tables: privileges refuse before row security is asked
            with pytest.raises(errors.InsufficientPrivilege):
                as_app.execute(sql.SQL("UPDATE {} SET tenant_id = tenant_id WHERE tenant_id = %s")
                               .format(_ident(table)), [b])
        assert _digest(as_owner, table, b) == before, table


def test_bound_to_one_tenant_rows_cannot_be_written_into_another(filled, as_app, as_owner, app_role):
    tables, a, b = filled
    _scope(as_app, str(a))
    for table in tables:
        before_a, before_b = _digest(as_owner, table, a), _digest(as_owner, table, b)
        # A copy of one of A's rows, relabelled as B's.
        copy = sql.SQL(
            "INSERT INTO {t} SELECT (jsonb_populate_record(NULL::{t}, to_jsonb(s) || jsonb_build_object('tenant_id', %s::bigint))).* "
            "FROM {t} s WHERE s.tenant_id = %s LIMIT 1"
        ).format(t=_ident(table))
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            as_app.execute(copy, [b, a])
        # Moving A's own rows into B.
        if as_owner.execute("SELECT has_table_privilege(%s, %s, 'UPDATE')", [app_role, table]).fetchone()[0]:
            with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
                as_app.execute(sql.SQL("UPDATE {} SET tenant_id = %s WHERE tenant_id = %s").format(_ident(table)), [b, a])
        assert (_digest(as_owner, table, a), _digest(as_owner, table, b)) == (before_a, before_b), table


@pytest.mark.parametrize("value", [None, "", "not-a-tenant", "1 OR true", "-1"])
def test_unbound_sees_nothing_and_changes_nothing(filled, as_app, as_owner, value):
    tables, a, b = filled
    if value is not None:  # None: the setting never set on this connection
        _scope(as_app, value)
    for table in tables:
        assert _count(as_owner, table) > 0
        assert _count(as_app, table) == 0, table
    before = _digest(as_owner, "gateway_run", a)
    assert as_app.execute("UPDATE gateway_run SET reason = 'changed'").rowcount == 0
    assert as_app.execute("DELETE FROM gateway_tasktransition").rowcount == 0
    assert _digest(as_owner, "gateway_run", a) == before
    assert _count(as_owner, "gateway_tasktransition", "WHERE tenant_id = %s", [a]) > 0


def test_the_system_scope_sees_every_tenant_and_the_platform_rows(filled, as_app, as_owner):
    tables, a, b = filled
    _scope(as_app, "*")
    for table in tables:
        assert _count(as_app, table) == _count(as_owner, table), table
    assert _count(as_app, "audit_auditentry", "WHERE tenant_id IS NULL") == \
        _count(as_owner, "audit_auditentry", "WHERE tenant_id IS NULL") > 0


# --------------------------------------------------------------------------- how a process binds its connection


def test_a_request_process_starts_unbound_and_membership_for_binds_it(world, settings):
    from django.db import connection

    from gateway.selectors import membership_for

    settings.GATEHOUSE_DB_SCOPE = "request"
    connection.close()
    assert dbscope.current() == ""
    membership_for(world["b"]["author"])
    assert dbscope.current() == str(world["b"]["tenant"].id)
    dbscope.reset()
    assert dbscope.current() == ""


def test_a_system_process_sees_every_tenant_and_membership_for_does_not_narrow_it(world, settings):
    from django.db import connection

    from gateway.selectors import membership_for

    settings.GATEHOUSE_DB_SCOPE = "system"
    connection.close()
    assert dbscope.current() == "*"
    membership_for(world["a"]["author"])
    assert dbscope.current() == "*"
    settings.GATEHOUSE_DB_SCOPE = "request"
    connection.close()


def test_system_scope_restores_the_previous_scope(world, settings):
    from django.db import DatabaseError, connection, transaction

    from gateway.selectors import membership_for

    settings.GATEHOUSE_DB_SCOPE = "request"
    connection.close()
    membership_for(world["a"]["author"])
    bound = str(world["a"]["tenant"].id)
    with dbscope.system_scope():
        assert dbscope.current() == "*"
    assert dbscope.current() == bound
    with pytest.raises(RuntimeError), dbscope.system_scope():
        raise RuntimeError("the block failed")
    assert dbscope.current() == bound
    # A statement failing inside a transaction: its rollback undoes the widening.
    with pytest.raises(DatabaseError), transaction.atomic(), dbscope.system_scope():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    assert dbscope.current() == bound


# --------------------------------------------------------------------------- the web request path as the app role


@pytest.fixture
def web_as_app(world, settings, app_role, as_owner):  # as_owner first: it connects with the owner's settings
    """The default connection as the application role in a request process, for the test client:
    the request path runs exactly as in the web server. The owner is back before the flush."""
    from django.db import connection

    settings.GATEHOUSE_DB_SCOPE = "request"
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update({"USER": app_role, "PASSWORD": APP_PASSWORD})
    try:
        yield world
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def _owner_rows(as_owner, query: str, params=()) -> list:
    return as_owner.execute(query, list(params)).fetchall()


def test_the_api_as_the_app_role_sees_its_tenant_even_with_the_selector_filter_gone(web_as_app, api, monkeypatch,
                                                                                    as_owner):
    from django.db import connection

    from gateway import selectors
    from gateway.models import Run

    w = web_as_app
    a, b = w["a"]["tenant"].id, w["b"]["tenant"].id
    client = api(w["a"]["author"])
    assert connection.settings_dict["USER"] == django_settings.GATEHOUSE_DB_APP_ROLE

    listed = client.get("/api/v1/runs")
    assert listed.status_code == 200, listed.content[:300]
    assert [r["id"] for r in listed.json()["results"]] == [str(w["a"]["run"].id)]
    assert dbscope.current() == ""  # reset when the request finished

    # The selector's tenant filter removed: the database still answers with A's rows only.
    def unfiltered(user):
        selectors.membership_for(user)
        return Run.objects.all().select_related("submitter")

    monkeypatch.setattr(selectors, "run_list_for_user", unfiltered)
    listed = client.get("/api/v1/runs")
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["results"]] == [str(w["a"]["run"].id)]
    foreign = client.get(f"/api/v1/runs/{w['b']['run'].id}")
    assert foreign.status_code == 404
    assert str(w["b"]["run"].id).encode() not in foreign.content
    # The same bypass, as a raw query in the scope a request of A's member is bound to.
    selectors.membership_for(w["a"]["author"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT tenant_id FROM gateway_run UNION SELECT DISTINCT tenant_id FROM approvals_gate")
        assert {r[0] for r in cursor.fetchall()} == {a}
    dbscope.reset()
    # The owner sees both: what hid B's run was the database, not the data.
    assert {r[0] for r in _owner_rows(as_owner, "SELECT tenant_id FROM gateway_run")} == {a, b}
    # The refusal was recorded, in A's log.
    denied = _owner_rows(as_owner, "SELECT tenant_id FROM audit_auditentry WHERE event = 'access.denied'")
    assert denied == [(a,)]


def test_login_refusals_and_denials_as_the_app_role_are_recorded(web_as_app, client, api, as_owner):
    w = web_as_app
    a = w["a"]["tenant"].id
    (last,), = _owner_rows(as_owner, "SELECT max(id) FROM audit_auditentry")
    failed = client.post("/login/", {"username": w["a"]["author"].username, "password": "wrong"})
    assert failed.status_code == 200 and "_auth_user_id" not in client.session
    ok = client.post("/login/", {"username": w["a"]["author"].username, "password": "pw"})
    assert ok.status_code == 302, ok.content[:300]
    assert client.get("/").status_code == 200
    anonymous = api().get("/api/v1/runs")
    assert anonymous.status_code == 401
    wrong_role = api(w["a"]["analyst"]).post("/api/v1/runs", data=WORKFLOW, content_type="application/yaml")
    assert wrong_role.status_code == 403
    rows = _owner_rows(as_owner, "SELECT event, tenant_id FROM audit_auditentry WHERE id > %s AND event IN "
                                 "('auth.login_failed', 'auth.login', 'access.denied') ORDER BY id", [last])
    assert rows == [("auth.login_failed", None), ("auth.login", a), ("access.denied", None), ("access.denied", a)]
    assert _owner_rows(as_owner, "SELECT count(*) FROM gateway_run WHERE tenant_id = %s", [a]) == [(1,)]


def test_auditors_as_the_app_role_tenant_scope_and_the_platform_wide_scope(web_as_app, api, as_owner):
    from audit.services import audit_append

    w = web_as_app
    a, b = w["a"]["tenant"], w["b"]["tenant"]
    tenant_auditor = api(w["a"]["auditor"])
    own = tenant_auditor.get("/api/v1/audit/entries?limit=500")
    assert own.status_code == 200, own.content[:300]
    assert {e["tenant"] for e in own.json()["results"]} == {a.slug}
    assert tenant_auditor.get(f"/api/v1/audit/entries?tenant={b.slug}").status_code == 404

    platform = api(w["platform_auditor"])
    everything = platform.get("/api/v1/audit/entries?limit=500")
    assert everything.status_code == 200, everything.content[:300]
    assert {e["tenant"] for e in everything.json()["results"]} >= {a.slug, b.slug, None}
    narrowed = platform.get(f"/api/v1/audit/entries?tenant={b.slug}&limit=500")
    assert {e["tenant"] for e in narrowed.json()["results"]} == {b.slug}
    latest = platform.get("/api/v1/audit/checkpoints/latest")
    assert latest.status_code == 200 and latest.json()["tree"] == "global" and latest.json()["verification"]["log_size"] > 0
    assert dbscope.current() == ""  # the widening ended with the request

    # An export by A's auditor places every queued entry first, B's too: the sequencer works across
    # tenants whichever process runs it.
    with dbscope.system_scope():
        queued_b = audit_append(event="auth.logout", tenant=b, actor=w["b"]["author"])
    exported = tenant_auditor.get("/api/v1/audit/export")
    assert exported.status_code == 200, exported.content[:300]
    b"".join(exported.streaming_content)
    # Nothing is left queued but the export's own entry, written after it.
    assert _owner_rows(as_owner, "SELECT e.event FROM audit_auditpending p JOIN audit_auditentry e ON e.id = p.entry_id"
                       ) == [("audit.exported",)]
    assert _owner_rows(as_owner, "SELECT tenant_id FROM audit_auditleaf WHERE entry_id = %s", [queued_b.id]) == [(b.id,)]


def test_the_asgi_server_as_the_app_role_in_its_default_scope(world, api, tmp_path):
    """The web server as deployed: Daphne as the application role, GATEHOUSE_DB_SCOPE left to its
    default. A's member sees A's run, B's run answers 404, and the next request of B's member on
    the same server sees B's run only: no scope survives its request."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from rest_framework.authtoken.models import Token

    daphne = Path(sys.executable).parent / "daphne"
    if not daphne.exists():
        pytest.skip(f"the ASGI server is not installed in this environment ({daphne} missing)")
    tokens = {name: Token.objects.get_or_create(user=world[name]["author"])[0].key for name in ("a", "b")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = django_settings.DATABASES["default"]
    env = {k: v for k, v in os.environ.items() if k not in ("GATEHOUSE_DB_SCOPE", "GATEHOUSE_DB_ALLOW_AUDIT_PURGE")}
    env.update({
        "GATEHOUSE_PROFILE": "test",
        "GATEHOUSE_DATABASE_URL": f"postgres://{django_settings.GATEHOUSE_DB_APP_ROLE}:{APP_PASSWORD}@"
                                  f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "GATEHOUSE_DB_CONN_MAX_AGE": "60",  # persistent connections: a scope must not outlive its request
        "GATEHOUSE_VAR_DIR": str(tmp_path / "var"),
    })
    log = open(tmp_path / "daphne.log", "wb")
    server = subprocess.Popen([str(daphne), "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"],
                              cwd=django_settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def get(path: str, token: str):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Token {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the ASGI server did not start:\n" + (tmp_path / "daphne.log").read_text()[-3000:])
                time.sleep(0.2)
        run_a, run_b = str(world["a"]["run"].id), str(world["b"]["run"].id)
        for name, own, other in (("a", run_a, run_b), ("b", run_b, run_a), ("a", run_a, run_b)):
            status, body = get("/api/v1/runs", tokens[name])
            assert status == 200, body[:300]
            assert [r["id"] for r in json.loads(body)["results"]] == [own]
            status, body = get(f"/api/v1/runs/{other}", tokens[name])
            assert status == 404 and other.encode() not in body
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        log.close()


# --------------------------------------------------------------------------- which processes are system processes


def _settings_in_subprocess(argv: list[str], **env) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    clean.update({"GATEHOUSE_VAR_DIR": "/tmp/gatehouse-settings-test", "DJANGO_SETTINGS_MODULE": "gateway.settings", **env})
    return subprocess.run([sys.executable, *argv], cwd=django_settings.BASE_DIR, env=clean, capture_output=True,
                          text=True, timeout=120)


def test_an_unknown_database_scope_is_refused_at_start():
    result = _settings_in_subprocess(["-c", "import django; django.setup()"], GATEHOUSE_DB_SCOPE="everything")
    assert result.returncode != 0 and "GATEHOUSE_DB_SCOPE" in result.stderr


def test_the_web_server_defaults_to_the_request_scope_and_manage_py_to_the_system_scope():
    show = "from gateway import dbscope; print(dbscope.process_scope())"
    web = _settings_in_subprocess(["-c", "import django; django.setup(); " + show])
    assert web.returncode == 0, web.stderr
    assert web.stdout.split() == ["request"]
    command = _settings_in_subprocess(["manage.py", "shell", "-c", show])
    assert command.returncode == 0, command.stderr
    assert command.stdout.strip().splitlines()[-1] == "system"


def test_a_celery_worker_makes_itself_a_system_process(settings):
    from gateway import celery

    settings.GATEHOUSE_DB_SCOPE = "request"
    try:
        celery._system_scope()  # worker_init and worker_process_init
        assert dbscope.process_scope() == "system"
        assert dbscope.current() in ("*", None)  # None: not PostgreSQL
    finally:
        dbscope._process_scope = None
        from django.db import connection

        connection.close()
    assert dbscope.process_scope() == "request"


def test_a_user_seen_first_through_the_identity_provider_is_written_in_its_tenants_scope(web_as_app, as_owner):
    """Provisioning on first sight runs before any selector has bound the connection."""
    from gateway.identity.sync import Principal, user_for_principal

    w = web_as_app
    a = w["a"]["tenant"]
    assert dbscope.current() == ""
    user = user_for_principal(Principal(subject="sub-first-sight", username="first-sight", email="",
                                        tenant_slug=a.slug, roles=("analyst",), groups=()))
    dbscope.reset()
    assert _owner_rows(as_owner, "SELECT tenant_id, roles FROM gateway_membership WHERE user_id = %s",
                       [user.pk]) == [(a.id, ["analyst"])]
    assert _owner_rows(as_owner, "SELECT tenant_id FROM audit_auditentry WHERE event = 'member.created' AND "
                                 "object_id = %s", [str(user.pk)]) == [(a.id,)]
