"""ASGI entry point (Daphne): the Django app for HTTP, the live-updates websocket (/ws/live/)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from gateway.realtime.consumer import ServerSendTap  # noqa: E402
from gateway.realtime.publisher import in_memory_layer  # noqa: E402
from gateway.realtime.relay import start_drainer  # noqa: E402
from gateway.realtime.routing import websocket_urlpatterns  # noqa: E402

if in_memory_layer():
    start_drainer()  # the embedded default: other processes' live messages come through the relay

if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # A socket from a page of another origin is refused at the handshake (ALLOWED_HOSTS); the
    # portal's session cookie authenticates the rest (gateway/realtime/consumer.py).
    # ServerSendTap: the hub writes a broadcast's frames below the stack (gateway/realtime/consumer.py).
    "websocket": ServerSendTap(AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
})
