from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from approvals.api import keys as key_api
from approvals.api import views as gate_views
from audit.api import views as audit_views
from executors.api import views as backend_api
from gateway import auth_views
from gateway.portal import urls as portal_urls
from gateway.api import clearances as clearance_api
from gateway.api import views as api
from gateway.identity import urls as identity_urls

api_v1 = [
    path("workflows/validate", api.WorkflowValidateApi.as_view(), name="workflow-validate"),
    path("workflows/schema", api.WorkflowSchemaApi.as_view(), name="workflow-schema"),
    path("runs", api.RunListCreateApi.as_view(), name="run-list"),
    path("runs/<uuid:run_id>", api.RunDetailApi.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/cancel", api.RunCancelApi.as_view(), name="run-cancel"),
    path("runs/<uuid:run_id>/artefacts", api.RunArtefactListApi.as_view(), name="run-artefacts"),
    path("artefacts/<uuid:artefact_id>", api.ArtefactDetailApi.as_view(), name="artefact-detail"),
    path("artefacts/<uuid:artefact_id>/content", api.ArtefactContentApi.as_view(), name="artefact-content"),
    path("gates", gate_views.GateListApi.as_view(), name="gate-list"),
    path("gates/<uuid:gate_id>", gate_views.GateDetailApi.as_view(), name="gate-detail"),
    path("gates/<uuid:gate_id>/decide", gate_views.GateDecideApi.as_view(), name="gate-decide"),
    path("gates/<uuid:gate_id>/document", gate_views.GateDocumentApi.as_view(), name="gate-document"),
    path("gates/<uuid:gate_id>/receipt", gate_views.GateReceiptApi.as_view(), name="gate-receipt"),
    path("gates/<uuid:gate_id>/relabel", gate_views.GateRelabelApi.as_view(), name="gate-relabel"),
    path("gates/<uuid:gate_id>/assignees", gate_views.GateAssigneeListApi.as_view(), name="gate-assignees"),
    path("gates/<uuid:gate_id>/assignees/<int:user_id>", gate_views.GateAssigneeDetailApi.as_view(),
         name="gate-assignee-detail"),
    path("me/keys", key_api.MyKeyListApi.as_view(), name="my-keys"),
    path("me/keys/rotate", key_api.MyKeyRotateApi.as_view(), name="my-key-rotate"),
    path("keys/<str:key_id>/revoke", key_api.KeyRevokeApi.as_view(), name="key-revoke"),
    path("tenant/clearances", clearance_api.ClearanceListApi.as_view(), name="clearance-list"),
    path("tenant/clearances/<int:clearance_id>", clearance_api.ClearanceDetailApi.as_view(), name="clearance-detail"),
    path("tenant/backends", backend_api.TenantBackendsApi.as_view(), name="tenant-backends"),
    path("tenant/backends/<str:name>/credentials", backend_api.BackendCredentialsApi.as_view(),
         name="backend-credentials"),
    path("audit/entries", audit_views.AuditEntryListApi.as_view(), name="audit-entries"),
    path("audit/export", audit_views.AuditExportApi.as_view(), name="audit-export"),
    path("audit/checkpoints/latest", audit_views.AuditCheckpointLatestApi.as_view(), name="audit-checkpoint-latest"),
]

_admin_password_login = admin.site.login


def _admin_login(request, extra_context=None):
    """The admin site signs in the way the portal does: its own password form is the dev login
    (DEBUG or the test profile only); otherwise the portal's login (Keycloak in oidc mode)."""
    from django.contrib.auth.views import redirect_to_login

    from gateway.identity.devlogin import dev_login_allowed

    if dev_login_allowed():
        return _admin_password_login(request, extra_context)
    return redirect_to_login(request.GET.get("next") or "/admin/", login_url="/login/")


admin.site.login = _admin_login

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/v1/", include(identity_urls.api_v1)),
    path("auth/oidc/", include(identity_urls.portal)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include(portal_urls)),
]
