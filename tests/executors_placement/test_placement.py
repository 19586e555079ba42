"""Placement: a task goes only to a backend cleared for its label (a hard filter, before tags,
preferences and capacity), checked at submission and again at dispatch."""
from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from audit.models import AuditEntry
from executors.backends import Backend, backends_configure
from gateway.errors import GatehouseError
from gateway.labels import dominates, parse_label
from gateway.models import Run, TaskInstance
from gateway.placement import PlacementRefused, hosts, placement_check, placement_choose
from gateway.services import run_submit

from tests.engine.driver import workflow

BACKENDS = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - name: cloud
    kind: batch
    max_classification: UNCLASSIFIED
    tags: [gpu, elastic]
    preference: 100
    config: {region: eu-west-2, queue: gh-jobs, job_definition: gh-task}
  - name: hpc
    kind: slurm
    max_classification: SECRET
    tags: [gpu, on-prem]
    capacity: 1
    preference: 10
    config: {cluster: hpc1, login_node: login.hpc.example, partition: batch}
  - name: vault-room
    kind: local
    max_classification: TOP SECRET
    tags: [on-prem]
    preference: 0
"""


@pytest.fixture
def configured(tenant):
    backends_configure(tenant=tenant, actor=None, source=BACKENDS)
    return tenant


def _placed(run) -> dict[str, str]:
    return dict(TaskInstance.objects.filter(run=run).values_list("key", "backend"))


def test_a_secret_task_never_reaches_the_cloud_whatever_the_preferences(recording, configured, author):
    run = run_submit(tenant=configured, actor=author, source=workflow(
        {"id": "open", "classification": "UNCLASSIFIED", "placement": {"prefer": ["cloud"]}},
        {"id": "secret", "classification": "SECRET", "placement": {"prefer": ["cloud", "hpc"], "tags": ["gpu"]}},
        {"id": "secret-default", "classification": "SECRET"},
    ))
    placed = _placed(run)
    assert placed["open"] == "cloud"  # preferred, and cleared for UNCLASSIFIED
    assert placed["secret"] == "hpc"  # cloud is first in its preferences, and refused all the same
    # The cloud has the highest tenant preference; hpc took the previous task (capacity 1), so vault-room.
    assert placed["secret-default"] == "vault-room"


def test_a_backend_named_explicitly_must_pass_the_ceiling_check(recording, configured, author, api):
    runs, tasks, entries = Run.objects.count(), TaskInstance.objects.count(), AuditEntry.objects.filter(event="run.submitted").count()
    source = workflow({"id": "ok", "classification": "UNCLASSIFIED", "backend": "cloud"},
                      {"id": "leak", "classification": "SECRET", "backend": "cloud"}, name="explicit")
    response = api(author).post("/api/v1/runs", data=source, content_type="application/yaml")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "no_backend_for_label"
    assert "'leak' (SECRET)" in body["message"] and "cloud" in body["message"]
    assert [(d["task"], d["label"], d["backend"]) for d in body["detail"]] == [("leak", "SECRET", "cloud")]
    assert (Run.objects.count(), TaskInstance.objects.count()) == (runs, tasks)  # nothing written
    assert AuditEntry.objects.filter(event="run.submitted").count() == entries


def test_a_workflow_no_backend_may_host_is_refused_naming_each_task_and_label(recording, configured, make_member, api):
    author = make_member(configured, "author", compartments=["NATO"])
    runs, tasks = Run.objects.count(), TaskInstance.objects.count()
    source = workflow({"id": "fine", "classification": "CONFIDENTIAL"},
                      {"id": "nato", "classification": "SECRET//NATO"},
                      {"id": "top", "classification": "TOP SECRET", "placement": {"tags": ["gpu"]}},
                      name="unhostable")
    response = api(author).post("/api/v1/runs", data=source, content_type="application/yaml")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "no_backend_for_label"
    assert "'nato' (SECRET//NATO)" in body["message"] and "'top' (TOP SECRET)" in body["message"]
    assert {d["task"]: d["label"] for d in body["detail"]} == {"nato": "SECRET//NATO", "top": "TOP SECRET"}
    assert all(d["line"] for d in body["detail"])
    assert (Run.objects.count(), TaskInstance.objects.count()) == (runs, tasks)
    refused = AuditEntry.objects.filter(event="request.refused", body__error="no_backend_for_label")
    assert refused.count() == 1  # the refusal is on record; the run is not


def test_tags_narrow_and_an_unknown_tag_is_refused(recording, configured, author):
    run = run_submit(tenant=configured, actor=author, source=workflow(
        {"id": "elastic", "classification": "UNCLASSIFIED", "placement": {"tags": ["elastic"]}},
        {"id": "onprem", "classification": "UNCLASSIFIED", "placement": {"tags": ["on-prem", "gpu"]}},
    ))
    assert _placed(run) == {"elastic": "cloud", "onprem": "hpc"}
    with pytest.raises(GatehouseError) as refused:
        run_submit(tenant=configured, actor=author, source=workflow(
            {"id": "fpga", "classification": "UNCLASSIFIED", "placement": {"tags": ["fpga"]}}, name="fpga"))
    assert refused.value.code == "no_backend_for_label" and "fpga" in refused.value.message


def test_capacity_sends_work_on_to_a_backend_with_room(recording, configured, author):
    run = run_submit(tenant=configured, actor=author, source=workflow(
        *({"id": f"s{i}", "classification": "SECRET", "placement": {"tags": ["on-prem"]}} for i in range(3))))
    # hpc (preference 10) has room for one; the rest go to vault-room.
    assert _placed(run) == {"s0": "hpc", "s1": "vault-room", "s2": "vault-room"}
    # hpc's one slot is still taken by s0 (QUEUED): the next run starts on vault-room.
    later = run_submit(tenant=configured, actor=author, source=workflow(
        {"id": "next", "classification": "SECRET", "placement": {"tags": ["on-prem"]}}, name="later"))
    assert _placed(later) == {"next": "vault-room"}


def test_a_ceiling_lowered_after_submission_refuses_at_dispatch(recording, configured, author):
    run = run_submit(tenant=configured, actor=author, source=workflow(
        {"id": "secret", "classification": "SECRET", "backend": "hpc"}))
    task = TaskInstance.objects.get(run=run, key="secret")
    backend = placement_check(task)
    assert (backend.name, backend.kind, backend.config["cluster"]) == ("hpc", "slurm", "hpc1")

    backends_configure(tenant=configured, actor=None, source=BACKENDS.replace(
        "max_classification: SECRET", "max_classification: CONFIDENTIAL"))
    with pytest.raises(PlacementRefused) as refused:
        placement_check(task)
    assert refused.value.code == "no_backend_for_label"
    assert "'secret' (SECRET)" in refused.value.message and "CONFIDENTIAL" in refused.value.message
    assert not refused.value.retryable

    backends_configure(tenant=configured, actor=None, source=BACKENDS.replace("capacity: 1\n", "capacity: 1\n    enabled: false\n"))
    with pytest.raises(PlacementRefused, match="disabled") as disabled:
        placement_check(task)
    assert disabled.value.code == "backend_unavailable"
    backends_configure(tenant=configured, actor=None, source=BACKENDS.split("  - name: hpc")[0])
    with pytest.raises(PlacementRefused, match="no longer configured"):
        placement_check(task)


def test_a_tenant_without_configuration_behaves_as_before(recording, tenant, make_member, settings):
    author = make_member(tenant, "author", compartments=["NATO"])
    run = run_submit(tenant=tenant, actor=author, source=workflow(
        {"id": "a", "classification": "SECRET//NATO"}, {"id": "b"}, {"id": "c", "backend": "local"}))
    assert _placed(run) == {"a": "local", "b": "local", "c": "local"}
    assert placement_check(TaskInstance.objects.get(run=run, key="a")).name == "local"
    settings.GATEHOUSE_BACKEND_DEFAULT_CEILING = "SECRET"
    runs = Run.objects.count()
    with pytest.raises(GatehouseError) as refused:
        run_submit(tenant=tenant, actor=author, source=workflow({"id": "ts", "classification": "TOP SECRET"}))
    assert refused.value.code == "no_backend_for_label" and "'ts' (TOP SECRET)" in refused.value.message
    assert Run.objects.count() == runs
    # A task already queued under the old ceiling is held at dispatch too.
    settings.GATEHOUSE_BACKEND_DEFAULT_CEILING = "CONFIDENTIAL"
    with pytest.raises(PlacementRefused):
        placement_check(TaskInstance.objects.get(run=run, key="a"))


def test_another_tenants_backends_are_not_names_a_task_may_use(recording, configured, other_tenant, make_member):
    stranger = make_member(other_tenant, "author")
    with pytest.raises(GatehouseError) as refused:
        run_submit(tenant=other_tenant, actor=stranger, source=workflow({"id": "a", "backend": "hpc"}))
    assert refused.value.code == "unknown_backend"
    assert not Run.objects.filter(tenant=other_tenant).exists()


# --------------------------------------------------------------------------- the rule as a property

LEVELS = ["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET", "TOP SECRET"]
labels = st.builds(lambda level, nato, rel: parse_label(level + ("//NATO" if nato else "") + (f"//REL TO {rel}" if rel else "")),
                   st.sampled_from(LEVELS), st.booleans(), st.sampled_from(["", "GBR", "GBR, USA"]))
backend_values = st.builds(
    Backend, name=st.sampled_from(["a", "b", "c", "d"]), kind=st.just("slurm"), ceiling=labels,
    tags=st.frozensets(st.sampled_from(["gpu", "x"]), max_size=2), capacity=st.none() | st.integers(1, 3),
    preference=st.integers(-5, 5), enabled=st.booleans())


@hsettings(max_examples=300, deadline=None, database=None)
@given(st.lists(backend_values, max_size=5, unique_by=lambda b: b.name), labels,
       st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4),
       st.frozensets(st.sampled_from(["gpu", "x"]), max_size=2),
       st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 4)))
def test_the_chosen_backend_always_dominates_the_label(backends, label, prefer, tags, load):
    choice = placement_choose(backends, label, tags=tags, prefer=prefer, load=load)
    possible = [b for b in backends if b.enabled and dominates(b.ceiling, label) and tags <= b.tags]
    if choice.backend is None:
        assert not possible and choice.reason
    else:
        assert choice.backend in possible and hosts(choice.backend, label)
        ranked_first = [b for b in possible if b.name in prefer]
        if ranked_first:  # the task's own preferences come first, among the cleared backends only
            assert choice.backend.name == min(ranked_first, key=lambda b: prefer.index(b.name)).name
    for named in ("a", "b"):
        explicit = placement_choose(backends, label, named=named, tags=tags)
        assert explicit.backend is None or (explicit.backend.name == named and dominates(explicit.backend.ceiling, label))


@pytest.mark.parametrize("kind", ["slurm", "batch"])
def test_a_tenant_without_configuration_cannot_name_a_backend_that_needs_one(recording, tenant, make_member, kind):
    author = make_member(tenant, "author")
    runs = Run.objects.count()
    with pytest.raises(GatehouseError) as refused:
        run_submit(tenant=tenant, actor=author, source=workflow({"id": "far", "backend": kind}))
    assert kind in refused.value.message or kind in str(refused.value.detail)
    assert Run.objects.count() == runs


def test_the_worker_refuses_to_run_a_task_its_backend_may_no_longer_host(recording, configured, author, artefact_root):
    from gateway.worker import task_execute

    run = run_submit(tenant=configured, actor=author, source=workflow(
        {"id": "secret", "classification": "SECRET", "backend": "vault-room", "run": "echo ran > out.txt",
         "outputs": [{"name": "out", "path": "out.txt"}]}))
    task = TaskInstance.objects.get(run=run, key="secret")
    backends_configure(tenant=configured, actor=None, source=BACKENDS.replace(
        "max_classification: TOP SECRET", "max_classification: CONFIDENTIAL"))
    assert task_execute(task.id, task.attempt) == "failed"
    task.refresh_from_db()
    assert task.state == "FAILED" and "no_backend_for_label" in task.reason
    assert not task.artefacts.exists()  # nothing ran: no output, no log
