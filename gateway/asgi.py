"""ASGI entry point (Daphne). Websocket routes join here in the portal work."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter({"http": django_asgi_app})
