"""Row-level security on the tenant-owned tables: the database's own wall between tenants,
behind the selectors' tenant filter.

Which tables: every table of a model, in one of the project's own apps, with a `tenant`
foreign key or a `tenant_id` column (tenant_owned_models, from the model registry, so a new
tenant-owned model is covered by the next `migrate` without a line here), except the ones in
EXCLUDED, each with its reason.

What each gets, after every `migrate` (a post_migrate handler in gateway.apps, like the audit
log's privileges in audit/db_privileges.py):

- ENABLE ROW LEVEL SECURITY, not FORCE: the owner (the role migrations, the test suite's flush
  and database administrators connect as) is exempt, the application role is not. A role that
  is neither gets no policy and so sees no row.
- one policy, POLICY, for the application role and every command:
  USING and WITH CHECK gatehouse_tenant_visible(tenant_id). The application role can neither
  read, change nor delete a row outside its scope, nor write a row into another tenant (or move
  one there with UPDATE).

gatehouse_tenant_visible(tenant) reads the session setting `gatehouse.tenant`
(gateway/dbscope.py says who sets it): '*' sees every row, including the platform rows whose
tenant_id is NULL (audit entries of failed logins and anonymous callers, the global log's
leaves and head); a tenant id sees that tenant's rows and never a NULL one; '' or unset sees
nothing, so a connection nobody bound fails closed. It is a plain SQL function so that the
planner inlines it into every query.

What RLS does not do: foreign-key checks run as the table owner, so a row of one tenant could
still name another tenant's row by id (the services never write one); TRUNCATE ignores RLS (the
application role has no TRUNCATE, audit/db_privileges.py); the tables without a tenant column
(the audit log's nodes and checkpoints, keys, users, tokens, sessions) are outside it.

apply_row_security is idempotent (a table, the function or a policy is changed only when it
differs from what is wanted) and serialised with an advisory lock. It does nothing on databases
other than PostgreSQL and, with a warning, when the application role is missing or is the role
migrations connect as.
"""
from __future__ import annotations

import logging
from pathlib import Path

from django.apps import apps
from django.db import transaction

from audit.db_privileges import app_role_restrictable

log = logging.getLogger(__name__)

SCHEMA = "public"
FUNCTION = "gatehouse_tenant_visible"
POLICY = "gatehouse_tenant_isolation"
COLUMN = "tenant_id"
# Serialises apply_row_security across concurrent migrate runs (pg_advisory_xact_lock key).
_LOCK_KEY = 0x6761_7465_726C_7331  # "gaterls1"

# Tenant-owned models that must NOT have row-level security, each with the reason.
EXCLUDED: dict[str, str] = {
    # The lookup that decides the scope: a request reads the caller's membership by user id
    # (authentication, the permission classes, login) before any tenant is bound, so it cannot be
    # behind a wall that needs the tenant it holds. Selectors never list memberships.
    "gateway.Membership": "read by user id to find the tenant a request is bound to",
}

_FUNCTION_BODY = """
    SELECT coalesce(pg_catalog.current_setting('gatehouse.tenant', true), '') = '*'
        OR tenant = CASE WHEN pg_catalog.current_setting('gatehouse.tenant', true) ~ '^[0-9]{1,18}$'
                         THEN pg_catalog.current_setting('gatehouse.tenant', true)::bigint END
"""
_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.{FUNCTION}(tenant bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $fn${_FUNCTION_BODY}$fn$
"""
_EXPRESSION = f"{SCHEMA}.{FUNCTION}({COLUMN})"


def _project_app(app_config) -> bool:
    """One of ours (gateway, gateway.identity, approvals, audit, ...), not an installed library."""
    from django.conf import settings

    path = Path(app_config.path).resolve()
    return path.is_relative_to(Path(settings.BASE_DIR).resolve()) and not (
        {"site-packages", "dist-packages"} & set(path.parts))


def _has_tenant_column(model) -> bool:
    return any(getattr(f, "column", None) == COLUMN for f in model._meta.concrete_fields)


def tenant_owned_models(*, include_excluded: bool = False) -> list:
    """Models of the project's apps whose table has a tenant_id column (a `tenant` foreign key,
    with or without a database constraint, or a plain tenant_id field)."""
    found = []
    for app_config in apps.get_app_configs():
        if not _project_app(app_config):
            continue
        for model in app_config.get_models():
            meta = model._meta
            if not meta.managed or meta.proxy or not _has_tenant_column(model):
                continue
            if meta.label in EXCLUDED and not include_excluded:
                continue
            found.append(model)
    return found


def tenant_owned_tables() -> list[str]:
    return sorted({m._meta.db_table for m in tenant_owned_models()})


def _q(connection, name: str) -> str:
    return connection.ops.quote_name(name)


def apply_row_security(connection, app_role: str) -> None:
    """Enable row-level security and the tenant policy on every tenant-owned table."""
    if connection.vendor != "postgresql":
        return
    if not app_role:
        log.warning("GATEHOUSE_DB_APP_ROLE is empty: row-level security not applied")
        return
    wanted = tenant_owned_tables()
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        if not app_role_restrictable(cursor, app_role, "row-level security"):
            return

        cursor.execute(
            "SELECT p.prosrc FROM pg_proc p WHERE p.pronamespace = %s::regnamespace AND p.proname = %s "
            "AND p.proargtypes = '20'::oidvector",
            [SCHEMA, FUNCTION],
        )
        existing = cursor.fetchone()
        if existing is None or existing[0] != _FUNCTION_BODY:
            cursor.execute(_FUNCTION_SQL)

        cursor.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
            "WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
            [SCHEMA, wanted],
        )
        tables = {name: (enabled, forced) for name, enabled, forced in cursor.fetchall()}
        missing = sorted(set(wanted) - set(tables))
        if missing:
            log.warning("tenant-owned tables not in the database (migrations missing?): %s", ", ".join(missing))
        cursor.execute(
            "SELECT tablename, permissive, roles::text[], cmd, qual, with_check FROM pg_policies "
            "WHERE schemaname = %s AND policyname = %s",
            [SCHEMA, POLICY],
        )
        policies = {r[0]: r[1:] for r in cursor.fetchall()}
        schema, role = _q(connection, SCHEMA), _q(connection, app_role)
        for table in sorted(tables):
            enabled, forced = tables[table]
            qualified = f"{schema}.{_q(connection, table)}"
            if not enabled:
                cursor.execute(f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY")
            if forced:
                # FORCE would subject the owner too, and it has no policy: migrations and the
                # test suite's flush would see nothing.
                log.warning("row-level security on %s was forced: the owner is exempt by design, unforcing", table)
                cursor.execute(f"ALTER TABLE {qualified} NO FORCE ROW LEVEL SECURITY")
            if not _policy_is_current(policies.get(table), app_role):
                if table in policies:
                    cursor.execute(f"DROP POLICY {_q(connection, POLICY)} ON {qualified}")
                cursor.execute(
                    f"CREATE POLICY {_q(connection, POLICY)} ON {qualified} AS PERMISSIVE FOR ALL TO {role} "
                    f"USING ({_EXPRESSION}) WITH CHECK ({_EXPRESSION})"
                )


def _policy_is_current(policy, app_role: str) -> bool:
    if policy is None:
        return False
    permissive, roles, cmd, qual, with_check = policy
    expected = f"{FUNCTION}({COLUMN})"
    accepted = (expected, f"{SCHEMA}.{expected}")
    return (permissive == "PERMISSIVE" and list(roles) == [app_role] and cmd == "ALL"
            and qual in accepted and with_check in accepted)
