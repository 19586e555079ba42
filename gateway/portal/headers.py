"""Security headers on every response: a Content-Security-Policy and, unless a view chose its own,
`Cache-Control: no-store` (pages, partials and API answers show tenant data, often classified: no
shared cache may keep them). X-Content-Type-Options and Referrer-Policy come from Django's
SecurityMiddleware (SECURE_CONTENT_TYPE_NOSNIFF, SECURE_REFERRER_POLICY).

The policy is one constant header without nonces (no page has an inline script, style or event
handler), so it is written here: Django 5.2 has no CSP support of its own (it arrives in 6.0,
`SECURE_CSP`), and a package for a constant header would add a dependency and nothing else.
`form-action` also names the identity provider's origin in oidc mode: a form posted by someone whose
session ended is redirected through /login/ to it, and Chromium applies form-action to redirects.
"""
from __future__ import annotations

import functools
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.cache import add_never_cache_headers


@functools.lru_cache(maxsize=4)
def _policy(provider_origin: str) -> str:
    form_action = "'self'" + (f" {provider_origin}" if provider_origin else "")
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        f"form-action {form_action}",
        "frame-ancestors 'none'",
    ])


def content_security_policy() -> str:
    from gateway.identity.conf import oidc_enabled

    origin = ""
    if oidc_enabled():
        parts = urlsplit(settings.GATEHOUSE_AUTH.get("SERVER_URL") or "")
        if parts.scheme in ("http", "https") and parts.netloc:
            origin = f"{parts.scheme}://{parts.netloc}"
    return _policy(origin)


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = content_security_policy()
        if "Cache-Control" not in response and not request.path.startswith(settings.STATIC_URL):
            add_never_cache_headers(response)  # max-age=0, no-cache, no-store, must-revalidate, private
        return response
