"""What every portal page shares: who may open it, how refusals look (and are audited), and the
rendering with the page's classification banner and the viewer's navigation."""
from __future__ import annotations

import functools
from collections.abc import Iterable

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from gateway.choices import Role
from gateway.errors import ErrorCode, Forbidden, GatehouseError, record_refusal
from gateway.selectors import membership_for

from .banners import page_banner

# Navigation: (label, URL, roles that see it; None = every member).
NAV = [
    ("Inbox", "/inbox/", None),
    ("My decisions", "/decisions/", None),
    ("Runs", "/runs/", None),
    ("Submit", "/submit/", {Role.AUTHOR, Role.TENANT_ADMIN}),
    ("Users", "/tenant/users/", {Role.TENANT_ADMIN}),
    ("Clearances", "/tenant/clearances/", {Role.TENANT_ADMIN}),
    ("Approver groups", "/tenant/approver-groups/", {Role.TENANT_ADMIN}),
    ("Backends", "/tenant/backends/", {Role.TENANT_ADMIN}),
    ("Tenants", "/platform/tenants/", {Role.PLATFORM_ADMIN}),
    ("Audit log", "/audit/", {Role.AUDITOR, Role.PLATFORM_AUDITOR}),
    ("Exports", "/audit/exports/", {Role.AUDITOR, Role.PLATFORM_AUDITOR}),
]


def nav_for(request) -> list[tuple[str, str, bool]]:
    membership = getattr(request.user, "membership", None)
    if membership is None:
        return []
    items = [(label, url) for label, url, roles in NAV if roles is None or any(membership.has_role(r) for r in roles)]
    # The current area is the longest matching prefix (/audit/exports/ is "Exports", not also "Audit log").
    current = max((url for _, url in items if request.path.startswith(url)), key=len, default=None)
    return [(label, url, url == current) for label, url in items]


def render_page(request, template: str, context: dict | None = None, *, labels: Iterable[str] = (),
                status: int = 200):
    """Render a page whose labelled content carries `labels` (canonical banners)."""
    context = dict(context or {})
    context.update(banner=page_banner(labels), floor=page_banner([]), nav=nav_for(request))
    return render(request, template, context, status=status)


def refused(request, exc: GatehouseError):
    """The portal's refusals are audited like the API's (gateway.errors.record_refusal)."""
    record_refusal(request, exc.status, exc.code, exc.message)
    return render_page(request, "error.html", {"error": exc}, status=exc.status)


def page(*roles: Role, partial: bool = False):
    """A portal view: signed in (else to the login page), a member of a tenant, holding one of
    `roles` (none given: any member), else a 403 page. A GatehouseError raised by the view (404 for
    what is out of scope, 4xx for a refused write) becomes its page, audited."""

    def wrap(view):
        @functools.wraps(view)
        def inner(request, *args, **kwargs):
            if not request.user.is_authenticated:
                if partial:  # a live region's fetch: no redirect chain, the page script reloads
                    return render(request, "partials/signed_out.html", status=401)
                return redirect_to_login(request.get_full_path())
            try:
                membership = membership_for(request.user)
                if roles and not any(membership.has_role(r) for r in roles):
                    names = ", ".join(Role(r).label.lower() for r in roles)
                    raise Forbidden(ErrorCode.PERMISSION_DENIED, f"This page is for: {names}.")
                return view(request, *args, **kwargs)
            except GatehouseError as exc:
                return refused(request, exc)

        return inner

    return wrap
