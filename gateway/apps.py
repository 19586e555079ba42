from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate


def _apply_row_security(sender, using=DEFAULT_DB_ALIAS, **kwargs):
    """After every migrate (and test-database flush): row-level security on the tenant-owned
    tables (gateway.rls)."""
    from django.conf import settings
    from django.db import connections

    from .rls import apply_row_security

    apply_row_security(connections[using], getattr(settings, "GATEHOUSE_DB_APP_ROLE", ""))


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Make the project's Celery app the current one in every process that loads Django,
        # so tasks sent from the web server go to the configured broker.
        from . import celery  # noqa: F401

        # Row-level security: the policies after every migrate (sender=self: once per run), and
        # each connection's tenant scope (gateway.dbscope).
        from django.core.signals import request_finished, request_started
        from django.db.backends.signals import connection_created

        from . import dbscope

        post_migrate.connect(_apply_row_security, sender=self, dispatch_uid="gateway.rls")
        connection_created.connect(dbscope.on_connection_created, dispatch_uid="gateway.dbscope.connection")
        request_started.connect(dbscope.on_request_boundary, dispatch_uid="gateway.dbscope.request_started")
        request_finished.connect(dbscope.on_request_boundary, dispatch_uid="gateway.dbscope.request_finished")
