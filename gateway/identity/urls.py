"""Identity URLs: the portal's OpenID Connect login (under /auth/oidc/) and /api/v1/tenant/users."""
from django.urls import path

from . import api, views

portal = [
    path("login/", views.oidc_login, name="oidc-login"),
    path("callback/", views.oidc_callback, name="oidc-callback"),
    path("logout/", views.oidc_logout, name="oidc-logout"),
    path("backchannel-logout/", views.backchannel_logout, name="oidc-backchannel-logout"),
]

api_v1 = [
    path("tenant/users", api.TenantUserListCreateApi.as_view(), name="tenant-user-list"),
    path("tenant/users/<int:user_id>", api.TenantUserDetailApi.as_view(), name="tenant-user-detail"),
]
