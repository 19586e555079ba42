"""Login and logout, each recorded in the audit log (a failed login too, durably).

The password form is the built-in dev login: it answers only with DEBUG on or under the test profile
(gateway.identity.devlogin), and 404 otherwise. In oidc mode /login/ sends the browser to Keycloak.
"""
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

from audit.services import audit_append
from gateway.identity.conf import oidc_enabled
from gateway.identity.devlogin import dev_login_allowed


def _membership(user):
    """The user's membership through membership_for, which binds this request's database scope to
    their tenant (gateway/dbscope.py), so the audit entry may be written in it; None without one."""
    from rest_framework.exceptions import APIException

    from gateway.errors import GatehouseError
    from gateway.selectors import membership_for

    try:
        return membership_for(user)
    except (GatehouseError, APIException):
        return None


class LoginView(auth_views.LoginView):
    template_name = "login.html"

    def dispatch(self, request, *args, **kwargs):
        if oidc_enabled():
            target = reverse("oidc-login")
            if request.GET.get("next"):
                target += "?" + urlencode({"next": request.GET["next"]})
            return HttpResponseRedirect(target)
        if not dev_login_allowed():
            raise Http404("The password login is for development only.")
        return super().dispatch(request, *args, **kwargs)

    def form_valid(self, form):
        response = super().form_valid(form)  # rotates the session id
        user = form.get_user()
        membership = _membership(user)
        audit_append(event="auth.login", actor=user, tenant_id=membership.tenant_id if membership else None,
                     data={"method": "password"})
        return response

    def form_invalid(self, form):
        # The attempted name is kept as an HMAC: it may be a password typed in the wrong field.
        audit_append(event="auth.login_failed", outcome="denied", error_code="bad_credentials",
                     secrets={"username": self.request.POST.get("username", "")[:150]})
        return super().form_invalid(form)


class LogoutView(auth_views.LogoutView):
    def post(self, request, *args, **kwargs):
        user = request.user
        if user.is_authenticated:
            membership = _membership(user)
            audit_append(event="auth.logout", actor=user, tenant_id=membership.tenant_id if membership else None)
        from gateway.identity.views import end_provider_session

        end_provider_session(request)  # a portal session opened through Keycloak ends there too
        return super().post(request, *args, **kwargs)
