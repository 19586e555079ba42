"""The portal: server-rendered pages over the same services and selectors as the API.

Views by area: analyst.py (inbox, gates, my decisions), author.py (submit, runs), admin.py
(tenant and platform admins), auditor.py (audit log and exports). Pages render without script;
gateway/static/gatehouse/portal.js only re-fetches a page's live region (a server-rendered partial,
read through the scoped selectors again) when the live socket says something changed.
"""
from __future__ import annotations

from django.shortcuts import render

from approvals import selectors as gate_selectors
from gateway import selectors
from gateway.errors import ErrorCode, GatehouseError, record_refusal

from .banners import page_banner
from .common import page, render_page


def csrf_failure(request, reason=""):
    """A state-changing form without its CSRF token: refused (403) and audited."""
    record_refusal(request, 403, ErrorCode.CSRF_FAILED, f"CSRF check failed: {reason}"[:300])
    error = GatehouseError(ErrorCode.CSRF_FAILED, "The form expired or did not come from this site; reload the page.",
                           status=403)
    return render(request, "error.html", {"error": error, "banner": page_banner([])}, status=403)


@page()
def home(request):
    """The dashboard: what awaits me, the latest runs, and the areas my roles open."""
    gates = list(gate_selectors.gate_list_with_progress(
        gate_selectors.gate_list_awaiting_user(request.user).select_related("run"))[:10])
    runs = list(selectors.run_list_for_user(request.user).order_by("-created_at")[:10])
    return render_page(request, "portal/home.html", {"gates": gates, "runs": runs},
                       labels=[g.classification for g in gates] + [r.classification for r in runs])
