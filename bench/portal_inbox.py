"""portal_inbox: the inbox API and page with 100,000 pending gates across 50 tenants."""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

NAME = "portal_inbox"
TITLE = "Inbox with 100,000 pending gates across 50 tenants"
TARGET_P95_MS = 100
LABELS = ("UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET")
APPROVERS = (["analyst"], ["senior-analyst"])
GATES_PER_RUN = 20
HOW = (
    "Seeding: 50 tenants made with `tenant_create`; in each, one real run of 20 root gates submitted with "
    "`run_submit` (so every row is as the services write it), then copied with `bulk_create` into 2,000 open "
    "gates per tenant (99 copies of that run's 20 gates: runs, task instances, gates and their eligibility "
    "rows, new ids), "
    "labels cycling UNCLASSIFIED / CONFIDENTIAL / SECRET / TOP SECRET (registered with `labels_register`) and "
    "approvers alternating `analyst` and the group `senior-analyst`; then ANALYZE. The measured analyst is one "
    "member of the first tenant, role analyst, cleared SECRET: their inbox holds 750 of their tenant's 2,000 "
    "gates (visible and theirs to decide), the rest of the 100,000 are filtered out by tenant, label, approver; "
    "so the page renders its largest size, 200 rows (the nearest deadlines; the API's first page is 50). "
    "One Daphne process serves the requests; the bench process sends them one at a time over HTTP (`requests`, "
    "keep-alive): `GET /api/v1/gates` (awaiting me, first page of 50 with the count; token authentication) and the "
    "inbox page `GET /inbox/` with the analyst's session (the portal's home page `/` where `/inbox/` does not "
    "exist yet; the figure's name says which). Each request's time is `time.perf_counter()` around the call, "
    "after 20 unmeasured warm-up requests of each; p50 and p95 over the measured ones."
)


def _workflow() -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "bench-inbox", "classification": "UNCLASSIFIED",
        "tasks": [{"id": f"g{i:02d}", "type": "gate", "title": f"Bench inbox gate {i}",
                   "options": ["confirm", "reject"], "approvers": ["analyst"]} for i in range(GATES_PER_RUN)],
    }, sort_keys=False)


def _clone(template_run, tenant_id: int, runs: int) -> int:
    """`runs` copies of the template run (its tasks, gates and eligibility rows); returns gates made."""
    from approvals.models import Gate, GateEligibility
    from gateway.models import Run, TaskInstance

    tasks = list(TaskInstance.objects.filter(run=template_run).order_by("id"))
    gates = {g.task_id: g for g in Gate.objects.filter(run=template_run)}
    new_runs, new_tasks, new_gates, eligibility = [], [], [], []
    made = 0
    for r in range(runs):
        run = Run(**{f.attname: getattr(template_run, f.attname) for f in Run._meta.concrete_fields})
        run.id = uuid.uuid4()
        new_runs.append(run)
        for n, task in enumerate(tasks):
            label = LABELS[(r * GATES_PER_RUN + n) % len(LABELS)]
            approvers = APPROVERS[(r + n) % len(APPROVERS)]
            copy = TaskInstance(**{f.attname: getattr(task, f.attname) for f in TaskInstance._meta.concrete_fields})
            copy.id, copy.run_id, copy.classification = None, run.id, label
            new_tasks.append(copy)
            gate = gates[task.id]
            g = Gate(**{f.attname: getattr(gate, f.attname) for f in Gate._meta.concrete_fields})
            g.id, g.run_id, g.classification, g.approvers = uuid.uuid4(), run.id, label, approvers
            g._task = copy
            new_gates.append(g)
            made += 1
    Run.objects.bulk_create(new_runs, batch_size=2000)
    TaskInstance.objects.bulk_create(new_tasks, batch_size=2000)  # ids come back on PostgreSQL
    for g in new_gates:
        g.task_id = g._task.id
        eligibility += [GateEligibility(tenant_id=tenant_id, gate_id=g.id, principal=p) for p in g.approvers]
    Gate.objects.bulk_create(new_gates, batch_size=2000)
    GateEligibility.objects.bulk_create(eligibility, batch_size=5000)
    return made


def _timed(session, url: str, n: int, warmup: int, **kwargs) -> list[float]:
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        response = session.get(url, timeout=60, **kwargs)
        elapsed = (time.perf_counter() - t0) * 1000.0
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
        if i >= warmup:
            out.append(elapsed)
    return out


def run(ctx, *, inbox_gates: int = 100_000, inbox_tenants: int = 50, inbox_requests: int = 200, **_) -> list:
    import requests
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from gateway.clearances import ClearanceInput, label_parse, labels_register
    from gateway.services import run_submit
    from gateway.tenancy import member_create, tenant_create

    from .common import Figure, percentile
    from .live_updates import _free_port, _wait_listening

    runs_per_tenant = max(0, inbox_gates // inbox_tenants // GATES_PER_RUN - 1)  # plus the template run
    top = ClearanceInput(policy=None, max_level="TOP SECRET", compartments=[], releasability=[])
    t0 = time.perf_counter()
    made, analyst = 0, None
    source = _workflow()
    for t in range(inbox_tenants):
        tenant = tenant_create(slug=f"inbox-{t:02d}", name=f"Inbox {t}")
        author = member_create(tenant=tenant, username=f"inbox-author-{t}", roles=["author"], clearance=top)
        template = run_submit(tenant=tenant, actor=author, source=source)
        labels_register(tenant.id, [label_parse(label) for label in LABELS])
        made += _clone(template, tenant.id, runs_per_tenant)
        made += GATES_PER_RUN  # the template's own gates are open too
        if t == 0:
            analyst = member_create(tenant=tenant, username="inbox-analyst", roles=["analyst"],
                                    clearance=ClearanceInput(policy=None, max_level="SECRET", compartments=[],
                                                             releasability=[]))
        if t % 10 == 9:
            ctx.say(f"{t + 1} tenants, {made} open gates ({time.perf_counter() - t0:.0f} s)")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    seed_seconds = time.perf_counter() - t0
    ctx.say(f"seeded {made} open gates in {seed_seconds:.0f} s")

    token = Token.objects.create(user=analyst).key
    client = Client()
    client.force_login(analyst)
    sessionid = client.cookies[settings.SESSION_COOKIE_NAME].value

    port = _free_port()
    daphne = ctx.procs._start("daphne-inbox", [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p",
                                               str(port), "gateway.asgi:application"])
    _wait_listening(port, daphne, 60)
    base = f"http://127.0.0.1:{port}"
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    first = api.get(f"{base}/api/v1/gates", timeout=60).json()
    ctx.say(f"the analyst's inbox: {first.get('count')} gates")
    api_ms = _timed(api, f"{base}/api/v1/gates", inbox_requests, 20)
    page = requests.Session()
    page.cookies.set(settings.SESSION_COOKIE_NAME, sessionid)
    path = "/inbox/" if page.get(f"{base}/inbox/", timeout=60).status_code == 200 else "/"
    page_ms = _timed(page, f"{base}{path}", inbox_requests, 20)
    target = f"p95 < {TARGET_P95_MS} ms"
    return [
        Figure("open gates in the database", made, ""),
        Figure("tenants", inbox_tenants, ""),
        Figure("gates in the analyst's inbox", first.get("count"), ""),
        Figure("seeding time", round(seed_seconds, 1), "s"),
        Figure("GET /api/v1/gates (awaiting me), p50", round(percentile(api_ms, 50), 1), "ms"),
        Figure("GET /api/v1/gates (awaiting me), p95", round(percentile(api_ms, 95), 1), "ms", target),
        Figure(f"GET {path} (inbox page), p50", round(percentile(page_ms, 50), 1), "ms"),
        Figure(f"GET {path} (inbox page), p95", round(percentile(page_ms, 95), 1), "ms", target),
    ]
