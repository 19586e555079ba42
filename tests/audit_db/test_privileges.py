"""The audit log is insert-only in the database itself: the application role may INSERT and
SELECT, and is refused UPDATE, DELETE and TRUNCATE by privileges; the owner is refused them by
triggers (audit/db_privileges.py). Each refusal is proved on a real, committed log: entries made
by audit_append and placed by the sequencer, with a signed checkpoint."""
from __future__ import annotations

import pytest
from psycopg import errors, sql

from audit.db_privileges import MESSAGE, ROW_TRIGGER, TRUNCATE_TRIGGER, append_only_tables

pytestmark = pytest.mark.django_db(transaction=True)

# table -> (primary key column, a change that would rewrite the row)
LOG_TABLES = {
    "audit_auditentry": ("id", "label = 'tampered'"),
    "audit_auditleaf": ("seq", "leaf_hash = '\\x00'::bytea"),
    "audit_auditnode": ("id", "hash = '\\x00'::bytea"),
    "audit_auditcheckpoint": ("id", "root = 'tampered'"),
}
OPERATIONS = ("UPDATE", "DELETE", "TRUNCATE")


@pytest.fixture
def log_rows(settings, tmp_path):
    """A committed log: three entries, two placed (two leaves, one node) under a signed
    checkpoint, one still queued. Returns table -> primary key of one of its rows."""
    from audit.keys import forget_signer
    from audit.models import AuditCheckpoint, AuditEntry, AuditLeaf, AuditNode, AuditPending
    from audit.sequencer import checkpoint_now
    from audit.services import audit_append

    settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "KEY_FILE": str(tmp_path / "keys" / "audit.key"),
                                "CHECKPOINT_STORE": str(tmp_path / "checkpoints")}
    forget_signer()
    first = audit_append(event="auth.login", object_type="user", object_id="1", data={"password": "s3cret"})
    audit_append(event="auth.logout", object_type="user", object_id="1")
    checkpoint_now()  # places both and signs (the sequencer's own batch may already have signed)
    placed = AuditLeaf.objects.filter(entry__event__in=["auth.login", "auth.logout"]).count()
    assert placed == 2 and AuditNode.objects.exists() and AuditCheckpoint.objects.exists()
    queued = audit_append(event="auth.login_failed", object_type="user", object_id="2")
    yield {
        "audit_auditentry": first.pk,
        "audit_auditleaf": AuditLeaf.objects.get(entry=first).pk,
        "audit_auditnode": AuditNode.objects.order_by("id").values_list("id", flat=True).first(),
        "audit_auditcheckpoint": AuditCheckpoint.objects.order_by("id").values_list("id", flat=True).first(),
        "audit_auditpending": AuditPending.objects.get(entry=queued).pk,
        "entries": AuditEntry.objects.count(),
    }
    forget_signer()


def _snapshot(conn, table: str, pk_column: str, pk) -> tuple:
    """The row as JSON and the table's row count."""
    row = conn.execute(
        sql.SQL("SELECT to_jsonb(t)::text FROM {} t WHERE {} = %s").format(sql.Identifier(table), sql.Identifier(pk_column)),
        [pk],
    ).fetchone()
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    assert row is not None, f"no row {pk} in {table}"
    return row[0], count


def _statement(table: str, operation: str, *, cascade: bool = False):
    pk_column, change = LOG_TABLES[table]
    if operation == "UPDATE":
        return sql.SQL("UPDATE {} SET " + change + " WHERE {} = %s").format(sql.Identifier(table), sql.Identifier(pk_column))
    if operation == "DELETE":
        return sql.SQL("DELETE FROM {} WHERE {} = %s").format(sql.Identifier(table), sql.Identifier(pk_column))
    # CASCADE: the owner's TRUNCATE of a referenced table would otherwise stop at the foreign key
    # check, before the triggers; with it, the trigger is what refuses.
    return sql.SQL("TRUNCATE {}" + (" CASCADE" if cascade else "")).format(sql.Identifier(table))


def _params(operation: str, pk):
    return None if operation == "TRUNCATE" else [pk]


def test_the_log_tables_are_the_four_insert_only_tables():
    assert sorted(append_only_tables()) == sorted(LOG_TABLES)


def test_app_role_is_unprivileged_and_owns_nothing(as_app, as_owner, app_role):
    attrs = as_owner.execute(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s", [app_role]
    ).fetchone()
    assert attrs == (False, False, False, False)
    owners = dict(as_owner.execute(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'audit\\_%'"
    ).fetchall())
    assert set(LOG_TABLES) | {"audit_auditpending", "audit_audithead", "audit_auditkey"} <= set(owners)
    for table, owner in owners.items():
        assert owner != app_role, table
        # Nor can it act as the owner through a role membership.
        assert as_owner.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [app_role, owner]).fetchone() == (False,)
    assert as_app.execute("SELECT current_user").fetchone() == (app_role,)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("table", LOG_TABLES)
def test_app_role_is_refused_by_privileges(as_app, log_rows, table, operation):
    pk_column, _ = LOG_TABLES[table]
    pk = log_rows[table]
    before = _snapshot(as_app, table, pk_column, pk)
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_app.execute(_statement(table, operation), _params(operation, pk))
    assert refused.value.sqlstate == "42501"
    assert refused.value.diag.message_primary == f"permission denied for table {table}"  # not the trigger
    assert _snapshot(as_app, table, pk_column, pk) == before


def test_app_role_is_refused_even_with_the_purge_option(as_app, log_rows):
    as_app.execute("SET gatehouse.audit_purge = on")
    for table, (pk_column, _) in LOG_TABLES.items():
        pk = log_rows[table]
        before = _snapshot(as_app, table, pk_column, pk)
        for operation in OPERATIONS:
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
                as_app.execute(_statement(table, operation, cascade=True), _params(operation, pk))
        assert _snapshot(as_app, table, pk_column, pk) == before


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("table", LOG_TABLES)
def test_owner_is_refused_by_the_triggers(as_owner, log_rows, table, operation):
    pk_column, _ = LOG_TABLES[table]
    pk = log_rows[table]
    before = _snapshot(as_owner, table, pk_column, pk)
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_owner.execute(_statement(table, operation, cascade=True), _params(operation, pk))
    assert refused.value.diag.message_primary == MESSAGE
    assert refused.value.diag.message_detail.startswith(f"{operation} on public.{table}")
    assert _snapshot(as_owner, table, pk_column, pk) == before


def test_owner_purge_option_lets_the_test_flush_through(as_owner, log_rows):
    """The escape hatch pytest-django's flush relies on (test profile only), here rolled back."""
    table, (pk_column, _) = "audit_auditcheckpoint", LOG_TABLES["audit_auditcheckpoint"]
    pk = log_rows[table]
    before = _snapshot(as_owner, table, pk_column, pk)
    with as_owner.transaction(force_rollback=True):
        as_owner.execute("SET LOCAL gatehouse.audit_purge = on")
        assert as_owner.execute(_statement(table, "DELETE"), [pk]).rowcount == 1
    assert _snapshot(as_owner, table, pk_column, pk) == before


def test_app_role_reads_and_appends(as_app, log_rows):
    for table, (pk_column, _) in LOG_TABLES.items():
        _snapshot(as_app, table, pk_column, log_rows[table])
    columns = [row[0] for row in as_app.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'audit_auditentry' AND column_name <> 'id' ORDER BY ordinal_position"
    ).fetchall()]
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    new_id = as_app.execute(
        sql.SQL("INSERT INTO audit_auditentry ({0}) SELECT {0} FROM audit_auditentry WHERE id = %s RETURNING id").format(names),
        [log_rows["audit_auditentry"]],
    ).fetchone()[0]
    assert new_id > log_rows["audit_auditentry"]
    assert as_app.execute("SELECT count(*) FROM audit_auditentry").fetchone() == (log_rows["entries"] + 1,)


def test_app_role_does_its_work_on_the_work_tables(as_app, log_rows):
    """What the sequencer and key rotation need, rolled back afterwards."""
    with as_app.transaction(force_rollback=True):
        assert as_app.execute(
            "UPDATE audit_audithead SET last_integrated_at = now() WHERE tree = 'global'").rowcount == 1
        assert as_app.execute(
            "DELETE FROM audit_auditpending WHERE entry_id = %s", [log_rows["audit_auditpending"]]).rowcount == 1
        assert as_app.execute("UPDATE audit_auditkey SET retired_at = now()").rowcount >= 1
    # TRUNCATE is nowhere granted, and only migrations (the owner) record migrations.
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("TRUNCATE audit_auditpending")
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("DELETE FROM django_migrations WHERE false")
    assert as_app.execute("SELECT count(*) > 0 FROM django_migrations").fetchone() == (True,)


def test_apply_privileges_is_idempotent_and_re_enables_a_disabled_trigger(as_owner, as_app, app_role, log_rows):
    from django.db import connection

    from audit.db_privileges import apply_privileges

    as_owner.execute(f'ALTER TABLE audit_auditnode DISABLE TRIGGER "{ROW_TRIGGER}"')
    apply_privileges(connection, app_role)
    apply_privileges(connection, app_role)
    triggers = as_owner.execute(
        "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname IN (%s, %s) ORDER BY 1, 2", [ROW_TRIGGER, TRUNCATE_TRIGGER]
    ).fetchall()
    assert triggers == sorted((table, name, "O") for table in LOG_TABLES for name in (ROW_TRIGGER, TRUNCATE_TRIGGER))
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        as_app.execute("DELETE FROM audit_auditnode WHERE id = %s", [log_rows["audit_auditnode"]])
