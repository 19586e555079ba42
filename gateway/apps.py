from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Make the project's Celery app the current one in every process that loads Django,
        # so tasks sent from the web server go to the configured broker.
        from . import celery  # noqa: F401
