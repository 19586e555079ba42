"""Login and logout, each recorded in the audit log (a failed login too, durably)."""
from django.contrib.auth import views as auth_views

from audit.services import audit_append


class LoginView(auth_views.LoginView):
    template_name = "login.html"

    def form_valid(self, form):
        response = super().form_valid(form)  # rotates the session id
        user = form.get_user()
        membership = getattr(user, "membership", None)
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
            membership = getattr(user, "membership", None)
            audit_append(event="auth.logout", actor=user, tenant_id=membership.tenant_id if membership else None)
        return super().post(request, *args, **kwargs)
