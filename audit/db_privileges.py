"""The audit log's database privileges: the application may add to the log and read it, never
change or remove what it holds.

Two roles. The *owner* (the role migrations connect as; `gatehouse` in `make test`) owns every
table. The *application role* (settings.GATEHOUSE_DB_APP_ROLE, `gatehouse_app` by default) is
what the web server, the workers and the sequencer connect as at run time: it owns nothing, is
not a superuser, cannot bypass row security and is a member of no role that owns a table. After
every `migrate` (a post_migrate handler in audit.apps) apply_privileges gives it:

- SELECT, INSERT, UPDATE, DELETE on every table in schema public, USAGE and SELECT on every
  sequence (the application's ordinary work, including the audit work tables: the sequencer
  deletes from audit_auditpending and updates audit_audithead; key rotation sets
  audit_auditkey.retired_at);
- then takes back UPDATE and DELETE on the four insert-only log tables (audit_auditentry,
  audit_auditleaf, audit_auditnode, audit_auditcheckpoint), TRUNCATE (and TRIGGER, REFERENCES)
  on every table, and every write on django_migrations (only migrations, as the owner, write it).

Privileges alone would leave the owner free to rewrite the log by mistake (a stray manage.py
shell, a data migration, `flush`). So each log table also has two triggers, calling
gatehouse_audit_append_only(): BEFORE UPDATE OR DELETE FOR EACH ROW and BEFORE TRUNCATE FOR
EACH STATEMENT. They raise SQLSTATE 42501 (insufficient_privilege) with the message "the audit
log is append-only", whoever the caller is.

The escape hatch. The triggers let the statement through when the session has
`gatehouse.audit_purge = on` (current_setting('gatehouse.audit_purge', true)). The test suite
needs it: pytest-django empties the test database between transactional tests with TRUNCATE, as
the owner, and the test profile sets that option on its own connections only
(GATEHOUSE_DB_ALLOW_AUDIT_PURGE). It weakens nothing:

- any role can set a custom option, so the triggers are not what stops the application role:
  its missing UPDATE, DELETE and TRUNCATE privileges are, and PostgreSQL checks privileges before
  any trigger runs. With or without the option the application role is refused;
- the owner can drop or disable the triggers (it owns the tables), and a superuser can do
  anything; for them the triggers are a guard against accidents, not a security boundary, with
  or without the hatch.

What protects the log against its owner or a database administrator is not in the database:
every entry is chained and placed in a Merkle tree whose signed checkpoints are also written
outside it (GATEHOUSE_AUDIT["CHECKPOINT_STORE"]), so a rewrite is detected by verification
against them, even one that recomputes every hash.

apply_privileges is idempotent (GRANT/REVOKE converge, the function is CREATE OR REPLACE, a
trigger is created only when missing and re-enabled when disabled) and serialised with an
advisory lock, so concurrent `migrate` runs do not race. It does nothing on databases other than
PostgreSQL (the embedded SQLite profile has no roles) and, with a warning, when the application
role does not exist or is the role migrations connect as (there is then nothing to separate).
"""
from __future__ import annotations

import logging

from django.db import transaction

log = logging.getLogger(__name__)

SCHEMA = "public"
FUNCTION = "gatehouse_audit_append_only"
ROW_TRIGGER = "gatehouse_audit_append_only_row"
TRUNCATE_TRIGGER = "gatehouse_audit_append_only_truncate"
MESSAGE = "the audit log is append-only"
PURGE_SETTING = "gatehouse.audit_purge"
# Serialises apply_privileges across concurrent migrate runs (pg_advisory_xact_lock key).
_LOCK_KEY = 0x6761_7465_6175_6470  # "gateaudp"


def append_only_tables() -> list[str]:
    """The insert-only log tables (their current db_table names)."""
    from .models import AuditCheckpoint, AuditEntry, AuditLeaf, AuditNode

    return [m._meta.db_table for m in (AuditEntry, AuditLeaf, AuditNode, AuditCheckpoint)]


_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.{FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- See audit/db_privileges.py: the application role is refused by privileges before this
    -- runs; this guards the owner against accidents, except in a test database being emptied.
    IF coalesce(current_setting('{PURGE_SETTING}', true), '') = 'on' THEN
        IF TG_LEVEL = 'ROW' THEN
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            RETURN NEW;
        END IF;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '{MESSAGE}'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = format('%s on %I.%I refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME),
              HINT = 'audit entries are only ever added, through audit.services.audit_append';
END
$fn$
"""


def _q(connection, name: str) -> str:
    return connection.ops.quote_name(name)


def app_role_restrictable(cursor, app_role: str, what: str) -> bool:
    """Whether `app_role` exists and is not the role migrations connect as (then `what` can restrict
    it); warns, naming `what`, when it cannot, or when it is a superuser or bypasses row security."""
    cursor.execute(
        "SELECT rolsuper, rolbypassrls, rolname = current_user FROM pg_roles WHERE rolname = %s", [app_role]
    )
    row = cursor.fetchone()
    if row is None:
        log.warning("database role %r does not exist: %s not applied (create it, then run migrate again)",
                    app_role, what)
        return False
    superuser, bypassrls, is_current = row
    if is_current:
        log.warning("the application role %r is the role migrations connect as: it owns the tables, so %s cannot "
                    "restrict it; not applied", app_role, what)
        return False
    if superuser or bypassrls:
        log.warning("the application role %r is a superuser or bypasses row security: %s does not restrict it",
                    app_role, what)
    return True


def apply_privileges(connection, app_role: str) -> None:
    """Grant the application role its privileges and install the append-only triggers."""
    if connection.vendor != "postgresql":
        return
    if not app_role:
        log.warning("GATEHOUSE_DB_APP_ROLE is empty: audit log privileges not applied")
        return
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        if not app_role_restrictable(cursor, app_role, "audit log privileges"):
            return

        role = _q(connection, app_role)
        schema = _q(connection, SCHEMA)
        cursor.execute("SELECT current_database()")
        database = _q(connection, cursor.fetchone()[0])
        cursor.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
        cursor.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        cursor.execute(f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {schema} FROM {role}")

        cursor.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p') "
            "AND c.relname = ANY(%s)",
            [SCHEMA, append_only_tables() + ["django_migrations"]],
        )
        present = {name for (name,) in cursor.fetchall()}
        if "django_migrations" in present:
            cursor.execute(f"REVOKE INSERT, UPDATE, DELETE ON {schema}.django_migrations FROM {role}")
        tables = [t for t in append_only_tables() if t in present]
        for table in tables:
            cursor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.{_q(connection, table)} FROM {role}")

        cursor.execute(_FUNCTION_SQL)
        cursor.execute(
            "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s) AND t.tgname IN (%s, %s)",
            [SCHEMA, tables, ROW_TRIGGER, TRUNCATE_TRIGGER],
        )
        existing = {(table, name): enabled for table, name, enabled in cursor.fetchall()}
        for table in tables:
            qualified = f"{schema}.{_q(connection, table)}"
            for name, timing in (
                (ROW_TRIGGER, "BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW"),
                (TRUNCATE_TRIGGER, "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT"),
            ):
                enabled = existing.get((table, name))
                if enabled is None:
                    cursor.execute(
                        f"CREATE TRIGGER {_q(connection, name)} {timing.format(t=qualified)} "
                        f"EXECUTE FUNCTION {schema}.{FUNCTION}()"
                    )
                elif enabled == "D":
                    log.warning("trigger %s on %s was disabled: enabling it again", name, table)
                    cursor.execute(f"ALTER TABLE {qualified} ENABLE TRIGGER {_q(connection, name)}")
