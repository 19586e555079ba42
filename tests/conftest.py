"""Shared fixtures. Test data is made by the real services (tenant_create, member_create,
run_submit), never by writing rows by hand."""
from __future__ import annotations

import pytest


@pytest.fixture
def artefact_root(settings, tmp_path):
    settings.GATEHOUSE_ARTEFACT_STORE = {"backend": "file", "root": str(tmp_path / "artefacts")}
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "WORKDIR_ROOT": str(tmp_path / "work")}
    return tmp_path / "artefacts"


@pytest.fixture
def recording(settings, artefact_root):
    """Engine messages are kept in memory instead of going to Celery, so a test decides
    when and in which order each one is handled."""
    from gateway.dispatch import RecordingDispatcher

    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "DISPATCHER": "gateway.dispatch.RecordingDispatcher"}
    RecordingDispatcher.reset()
    yield RecordingDispatcher
    RecordingDispatcher.reset()


@pytest.fixture
def make_tenant(db):
    from gateway.tenancy import tenant_create

    counter = iter(range(10_000))

    def make(slug: str | None = None):
        n = next(counter)
        return tenant_create(slug=slug or f"tenant-{n}", name=f"Tenant {n}")

    return make


@pytest.fixture
def make_member(db):
    from gateway.tenancy import member_create

    counter = iter(range(10_000))

    def make(tenant, *roles: str, groups=(), username: str | None = None, clearance: str | None = "TOP SECRET",
             compartments=(), releasability=()):
        """A member; by default cleared to TOP SECRET without compartments or codes (labels with
        compartments or REL TO need them given); clearance=None: no clearance at all."""
        from gateway.clearances import ClearanceInput

        return member_create(
            tenant=tenant, username=username or f"{'-'.join(roles) or 'user'}-{tenant.slug}-{next(counter)}",
            roles=list(roles), groups=list(groups), password="pw",
            clearance=None if clearance is None else ClearanceInput(
                policy=None, max_level=clearance, compartments=list(compartments), releasability=list(releasability)),
        )

    return make


@pytest.fixture
def tenant(make_tenant):
    return make_tenant("acme")


@pytest.fixture
def other_tenant(make_tenant):
    return make_tenant("globex")


@pytest.fixture
def author(make_member, tenant):
    return make_member(tenant, "author", username="author")


@pytest.fixture
def analyst(make_member, tenant):
    return make_member(tenant, "analyst", username="analyst")


@pytest.fixture
def api():
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def client_for(user=None):
        client = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return client_for
