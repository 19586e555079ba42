"""decisions: signed gate decisions per second, end to end, with each signer."""
from __future__ import annotations

import time
import uuid

import yaml

from .common import Figure, percentile

NAME = "decisions"
TITLE = "Signed gate decisions: throughput and cost per decision, local signer and OpenBao Transit"
HOW = (
    "Each run is a gate `g` (required_approvals 1) and a task `after` that needs it; all runs are submitted first, "
    "so every gate is open. The bench process then decides them one after another with "
    "`approvals.services.gate_decide` (option confirm), which builds the RFC 8785 document, signs it, verifies the "
    "signature against the registered public key, records the decision and its signature (unique nonce and "
    "signature hash), re-verifies the standing approvals at release, concludes the gate, readies `after` and sends "
    "its dispatch message to the broker on commit (no worker runs: the messages wait in Redis). Decisions/s = "
    "measured decisions / wall time of the loop (`time.perf_counter()`); per-decision p50/p99 are of each call. "
    "Local: the approver's Ed25519 key sealed under the master key on the server (the embedded default). Transit: a "
    "real OpenBao dev server (`bao server -dev`, loopback) with JWT auth trusting the realm keys of the Keycloak "
    "stand-in (tests/keycloak_standin, real RS256 tokens), one Transit key per approver and the templated policy; "
    "each decision passes the approver's access token, gets a Vault token through JWT login and signs with "
    "`transit/sign/<subject>` (two HTTP calls to Vault per decision). The first decisions of each case warm up and "
    "are not counted. Decision → dependant claimed by a worker, with signing included, is the `gate_release` "
    "benchmark (its decisions are signed the same way, local signer)."
)


def _workflow() -> str:
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "bench-decisions",
        "tasks": [{"id": "g", "type": "gate", "title": "Bench gate", "options": ["confirm", "reject"],
                   "approvers": ["analyst"]},
                  {"id": "after", "needs": ["g"], "run": "true"}],
    }, sort_keys=False)


def _decide_all(ctx, actor, count: int, warmup: int, **kwargs) -> tuple[float, list[float]]:
    from approvals.models import Gate
    from approvals.services import gate_decide
    from gateway.services import run_submit

    source = _workflow()
    runs = [run_submit(tenant=ctx.tenant, actor=ctx.author, source=source) for _ in range(count + warmup)]
    gates = list(Gate.objects.filter(run_id__in=[r.id for r in runs]).select_related("run", "task"))
    per_call, started = [], None
    for index, gate in enumerate(gates):
        if index == warmup:
            started = time.perf_counter()
        t0 = time.perf_counter()
        gate_decide(gate=gate, actor=actor, option="confirm", **kwargs)
        if index >= warmup:
            per_call.append((time.perf_counter() - t0) * 1000)
    wall = time.perf_counter() - started
    released = Gate.objects.filter(id__in=[g.id for g in gates], state="APPROVED").count()
    if released != len(gates):
        raise RuntimeError(f"only {released} of {len(gates)} gates were released")
    return wall, per_call


def run(ctx, *, decisions: int = 300, warmup: int = 10, **_) -> list[Figure]:
    from django.test import override_settings

    from approvals.signing.keys import approver_key_enrol
    from approvals.signing.signers import vault_approver_auth_configure
    from gateway.clearances import ClearanceInput, clearance_set
    from gateway.identity.sync import principal_from_claims, user_for_principal
    from gateway.identity.tokens import access_token_claims, jwks
    from tests.keycloak_standin import CLIENT_ID, CLIENT_SECRET, REALM, KeycloakStandin
    from tests.vault import OpenBaoServer, enable_transit

    ctx.say(f"local signer: {decisions} decisions ({warmup} warm-up)")
    local_wall, local_ms = _decide_all(ctx, ctx.analyst, decisions, warmup)

    ctx.say("starting the Keycloak stand-in and OpenBao")
    with KeycloakStandin() as keycloak, OpenBaoServer() as openbao:
        root = openbao.client()
        enable_transit(root)
        vault_approver_auth_configure(root, jwks_url=f"{keycloak.issuer}/protocol/openid-connect/certs",
                                      issuer=keycloak.issuer, audience=CLIENT_ID)
        auth = {"MODE": "oidc", "SERVER_URL": keycloak.url, "REALM": REALM, "ISSUER": "", "CLIENT_ID": CLIENT_ID,
                "CLIENT_SECRET": CLIENT_SECRET, "INTROSPECTION_CACHE_SECONDS": 0, "JWKS_MIN_REFRESH_SECONDS": 0}
        from django.conf import settings

        with override_settings(
            GATEHOUSE_AUTH={**settings.GATEHOUSE_AUTH, **auth},
            GATEHOUSE_APPROVAL_SIGNING={**settings.GATEHOUSE_APPROVAL_SIGNING, "BACKEND": "transit",
                                        "VAULT_URL": openbao.url},
        ):
            jwks.forget()
            username = f"bench-transit-{uuid.uuid4().hex[:8]}"
            keycloak.add_user(username, groups=[f"/tenants/{ctx.tenant.slug}"], realm_roles=["analyst"])
            token = keycloak.password_token(username)["access_token"]
            approver = user_for_principal(principal_from_claims(access_token_claims(token)))
            clearance_set(tenant=ctx.tenant, user=approver, data=ClearanceInput(
                policy=None, max_level="TOP SECRET", compartments=[], releasability=[]))
            approver_key_enrol(approver, backend="transit", vault_client=root)
            ctx.say(f"Transit signer: {decisions} decisions ({warmup} warm-up)")
            transit_wall, transit_ms = _decide_all(ctx, approver, decisions, warmup, access_token=token)
            jwks.forget()

    local_rate, transit_rate = decisions / local_wall, decisions / transit_wall
    ctx.say(f"local {local_rate:.0f}/s, Transit {transit_rate:.0f}/s")
    return [
        Figure("decisions per case (measured)", decisions, "decisions"),
        Figure("warm-up decisions per case (not counted)", warmup, "decisions"),
        Figure("local signer: decisions per second", round(local_rate, 1), "decisions/s"),
        Figure("local signer: gate_decide p50", round(percentile(local_ms, 50), 2), "ms"),
        Figure("local signer: gate_decide p99", round(percentile(local_ms, 99), 2), "ms"),
        Figure("OpenBao Transit: decisions per second", round(transit_rate, 1), "decisions/s"),
        Figure("OpenBao Transit: gate_decide p50", round(percentile(transit_ms, 50), 2), "ms"),
        Figure("OpenBao Transit: gate_decide p99", round(percentile(transit_ms, 99), 2), "ms"),
    ]
