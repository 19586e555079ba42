"""Websocket routes, mounted by gateway/asgi.py behind the session and origin checks."""
from django.urls import path

from . import events  # noqa: F401 - connects the logout receiver in the server process
from .consumer import LiveConsumer

websocket_urlpatterns = [path("ws/live/", LiveConsumer.as_asgi())]
