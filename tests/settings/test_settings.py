"""Settings come from the environment; the production profile refuses unsafe starts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What production needs for identity (Keycloak); the checks below that test something else pass it.
OIDC = {"GATEHOUSE_AUTH_MODE": "oidc", "GATEHOUSE_KEYCLOAK_URL": "https://id.example.org",
        "GATEHOUSE_KEYCLOAK_CLIENT_SECRET": "c" * 32}


def start(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    clean["GATEHOUSE_VAR_DIR"] = "/tmp/gatehouse-settings-test"
    clean.update(env)
    return subprocess.run([sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.DEBUG, settings.DATABASES['default']['ENGINE'])"],
                          cwd=ROOT, env={**clean, "DJANGO_SETTINGS_MODULE": "gateway.settings"}, capture_output=True, text=True)


def test_the_embedded_default_needs_no_server():
    result = start()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "django.db.backends.sqlite3"]


def test_production_refuses_to_start_without_a_secret():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_DEBUG="false")
    assert result.returncode != 0 and "GATEHOUSE_SECRET_KEY" in result.stderr


def test_production_refuses_to_start_with_debug_on():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_DEBUG="true", GATEHOUSE_SECRET_KEY="s" * 40)
    assert result.returncode != 0 and "DEBUG" in result.stderr


def test_production_refuses_to_start_without_an_audit_hmac_key():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_SECRET_KEY="s" * 40, **OIDC)
    assert result.returncode != 0 and "GATEHOUSE_AUDIT_HMAC_KEY" in result.stderr


def test_production_refuses_to_start_with_the_dev_login():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_SECRET_KEY="s" * 40, GATEHOUSE_AUDIT_HMAC_KEY="h" * 40,
                   GATEHOUSE_DATABASE_URL="postgres://u:p@127.0.0.1:5432/x")
    assert result.returncode != 0 and "GATEHOUSE_AUTH_MODE" in result.stderr


def test_production_refuses_to_start_without_keycloak():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_SECRET_KEY="s" * 40, GATEHOUSE_AUDIT_HMAC_KEY="h" * 40,
                   GATEHOUSE_DATABASE_URL="postgres://u:p@127.0.0.1:5432/x", GATEHOUSE_AUTH_MODE="oidc")
    assert result.returncode != 0 and "GATEHOUSE_KEYCLOAK_URL" in result.stderr


def test_a_token_leeway_over_30_seconds_is_refused():
    result = start(GATEHOUSE_AUTH_LEEWAY="60")
    assert result.returncode != 0 and "GATEHOUSE_AUTH_LEEWAY" in result.stderr


def test_production_starts_with_its_secrets_and_debug_off():
    result = start(GATEHOUSE_PROFILE="production", GATEHOUSE_SECRET_KEY="s" * 40, GATEHOUSE_AUDIT_HMAC_KEY="h" * 40,
                   GATEHOUSE_DATABASE_URL="postgres://u:p@127.0.0.1:5432/x", **OIDC)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "django.db.backends.postgresql"]


def test_an_unknown_profile_is_refused():
    result = start(GATEHOUSE_PROFILE="staging")
    assert result.returncode != 0 and "GATEHOUSE_PROFILE" in result.stderr
