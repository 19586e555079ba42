from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate


def _apply_db_privileges(sender, using=DEFAULT_DB_ALIAS, **kwargs):
    """After every migrate (and test-database flush): the application role's privileges and the
    audit log's append-only triggers (audit.db_privileges)."""
    from django.conf import settings
    from django.db import connections

    from .db_privileges import apply_privileges

    apply_privileges(connections[using], getattr(settings, "GATEHOUSE_DB_APP_ROLE", ""))


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # sender=self: once per migrate run, not once per installed app.
        post_migrate.connect(_apply_db_privileges, sender=self, dispatch_uid="audit.db_privileges")
