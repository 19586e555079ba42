"""The built-in dev login (password form and API tokens) answers only with DEBUG on or under the test profile."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("profile,debug,login_status,token_status", [
    ("dev", False, 404, 401),  # dev profile with DEBUG off: no password login, no API tokens
    ("dev", True, 200, 200),  # `make run`: GATEHOUSE_PROFILE=dev, DEBUG on by default
    ("test", False, 200, 200),  # the test suite (pytest-django turns DEBUG off)
])
def test_the_dev_login_needs_debug_or_the_test_profile(profile, debug, login_status, token_status, settings, client,
                                                       api, author):
    settings.PROFILE, settings.DEBUG = profile, debug
    assert client.get("/login/").status_code == login_status
    posted = client.post("/login/", {"username": "author", "password": "pw"})
    assert (posted.status_code == 302) == (login_status == 200)
    assert api(author).get("/api/v1/runs").status_code == token_status


def test_the_admin_sites_password_form_is_the_dev_login_only(client, settings, db):
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "MODE": "dev"}
    assert client.get("/admin/login/").status_code == 200  # the test profile allows the dev login
    settings.GATEHOUSE_AUTH = {**settings.GATEHOUSE_AUTH, "MODE": "oidc"}
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    posted = client.post("/admin/login/", {"username": "x", "password": "y"})
    assert posted.status_code == 302 and "_auth_user_id" not in client.session
