"""Property-based tests over random DAGs and random orders of completions, failures,
decisions and duplicated messages. Invariants:

- every attempt is claimed at most once, and a task that never fails runs exactly once, whether
  its message was sent or it was held past the dispatch window and claimed by a draining worker;
- a task is claimed only once everything it needs has SUCCEEDED;
- an undecided gate blocks only its descendants: everything else reaches its end first;
- at the end the run is closed and every task's state follows from its needs'.
"""
from __future__ import annotations

import random

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from hypothesis import HealthCheck, given, settings, strategies as st

from approvals.models import Gate
from approvals.services import gate_decide
from gateway.choices import TASK_TERMINAL
from gateway.dispatch import RecordingDispatcher
from gateway.models import TaskInstance, TaskTransition
from gateway.worker import task_claim, task_claim_held, task_finish

from .driver import FAIL, OK, submit

pytestmark = pytest.mark.django_db(transaction=True)


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=10))
    tasks = []
    for i in range(n):
        needs = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        task = {"id": f"t{i}", "needs": [f"t{j}" for j in needs]}
        if draw(st.integers(0, 3)) == 0:
            task["type"] = "gate"
        tasks.append(task)
    fail = draw(st.sets(st.sampled_from([t["id"] for t in tasks])))
    reject = draw(st.sets(st.sampled_from([t["id"] for t in tasks])))
    # The dispatch window: 0 sends every readied task a message; 1 or 2 hold the rest of a batch.
    window = draw(st.sampled_from([0, 1, 2]))
    return tasks, fail, reject, draw(st.integers(0, 2**32 - 1)), window


def descendants(tasks, root):
    children = {t["id"]: [] for t in tasks}
    for t in tasks:
        for need in t["needs"]:
            children[need].append(t["id"])
    seen, stack = set(), [root]
    while stack:
        for child in children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=dags())
def test_random_dags_in_random_orders(recording, make_tenant, make_member, case):
    tasks, fail, reject, seed, window = case
    with override_settings(GATEHOUSE_ENGINE={**django_settings.GATEHOUSE_ENGINE, "DISPATCH_WINDOW": window}):
        _play(recording, make_tenant, make_member, tasks, fail, reject, seed)


def _play(recording, make_tenant, make_member, tasks, fail, reject, seed):
    rng = random.Random(seed)
    tenant = make_tenant()
    author, analyst = make_member(tenant, "author"), make_member(tenant, "analyst")
    RecordingDispatcher.reset()
    run = submit(tenant, author, *tasks)
    rows = {t.key: t for t in TaskInstance.objects.filter(run=run)}
    by_id = {t.id: t.key for t in rows.values()}
    needs = {t["id"]: t["needs"] for t in tasks}
    kinds = {t["id"]: t.get("type", "task") for t in tasks}
    delivered: list[tuple[int, int]] = []  # every message handed to a "worker", for redelivery
    running: list[tuple[int, int]] = []
    executions: dict[str, int] = {}

    def states():
        return dict(TaskInstance.objects.filter(run=run).values_list("key", "state"))

    def step(allow_decisions: bool) -> bool:
        pending = [m for m in RecordingDispatcher.sent if m not in delivered]
        gates = list(Gate.objects.filter(run=run, state="OPEN")) if allow_decisions else []
        actions = [("claim", m) for m in pending] + [("finish", m) for m in running] + [("decide", g) for g in gates]
        if TaskInstance.objects.filter(run=run, state="QUEUED", held=True).exists():
            actions.append(("drain", None))  # a worker that finished one of the run's tasks takes a held one
        if delivered and rng.random() < 0.2:
            actions.append(("redeliver", rng.choice(delivered)))
        if not actions or all(a[0] == "redeliver" for a in actions):
            return False
        kind, item = rng.choice(actions)
        if kind in ("claim", "redeliver"):
            delivered.append(item)
            key = by_id[item[0]]
            current = states()
            claimed = task_claim(*item)
            if claimed is not None:
                assert kind == "claim", "a redelivered message ran an attempt again"
                assert all(current[n] == "SUCCEEDED" for n in needs[key]), f"{key} ran before its needs"
                executions[key] = executions.get(key, 0) + 1
                running.append(item)
        elif kind == "drain":
            current = states()
            claimed = task_claim_held(run.id)
            assert claimed is not None, "a held task was left but none could be claimed"
            key = claimed.key
            assert all(current[n] == "SUCCEEDED" for n in needs[key]), f"{key} ran before its needs"
            executions[key] = executions.get(key, 0) + 1
            running.append((claimed.id, claimed.attempt))
        elif kind == "finish":
            running.remove(item)
            key = by_id[item[0]]
            task_finish(*item, FAIL if key in fail else OK)
        else:
            option = "reject" if by_id[item.task_id] in reject else "confirm"
            gate_decide(gate=item, actor=analyst, option=option)
        return True

    # Phase 1: no decisions. Everything that does not descend from a gate must end.
    while step(allow_decisions=False):
        pass
    blocked = set().union(*(descendants(tasks, g) | {g} for g, k in kinds.items() if k == "gate")) if "gate" in kinds.values() else set()
    current = states()
    for key, state in current.items():
        if key not in blocked:
            assert state in TASK_TERMINAL, f"{key} is {state} though it does not depend on a gate"
    # Phase 2: decisions too, in random order with the rest.
    while step(allow_decisions=True):
        pass

    final = states()
    run.refresh_from_db()
    assert all(state in TASK_TERMINAL for state in final.values()), final
    assert run.state != "RUNNING"
    for key, state in final.items():
        needs_ok = all(final[n] == "SUCCEEDED" for n in needs[key])
        if not needs_ok:
            assert state == "SKIPPED", (key, state, final)
        elif kinds[key] == "gate":
            assert state == ("REJECTED" if key in reject else "SUCCEEDED")
        else:
            assert state == ("FAILED" if key in fail else "SUCCEEDED")
            assert executions.get(key) == 1, f"{key} ran {executions.get(key, 0)} times"
    for key, row in rows.items():
        claims = TaskTransition.objects.filter(task_id=row.id, to_state="RUNNING").values_list("attempt", flat=True)
        assert len(claims) == len(set(claims)), f"{key}: an attempt was claimed twice"
    if all(s == "SUCCEEDED" for s in final.values()):
        assert run.state == "SUCCEEDED"
