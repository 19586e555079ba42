"""The built-in dev login (password form and API tokens): the embedded default and the test suite only."""
from __future__ import annotations

from django.conf import settings


def dev_login_allowed() -> bool:
    """With DEBUG on, or under the test profile (pytest-django turns DEBUG off), and never in oidc mode."""
    if settings.GATEHOUSE_AUTH["MODE"] != "dev":
        return False
    return bool(settings.DEBUG) or getattr(settings, "PROFILE", "") == "test"
