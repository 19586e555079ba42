"""The audit log on the server: one way in, fail closed, denials durable, secrets never in
clear, the sequencer's chains and trees, signed checkpoints inside and outside the database."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from django.db import connection, connections, transaction

from audit.canonical import canonical
from audit.models import AuditCheckpoint, AuditEntry, AuditHead, AuditLeaf, AuditNode, AuditPending
from audit.note import NoteVerifier, open_note, parse_checkpoint
from audit.merkle import leaf_hash, node_hash
from audit.sequencer import GLOBAL, head_root, integrate, tenant_tree
from audit.services import audit_append, hmac_value
from audit.witness import get_witness
from gateway.models import Run

from tests.engine.driver import submit

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def audit_settings(settings, tmp_path, artefact_root):
    settings.GATEHOUSE_AUDIT = {
        **settings.GATEHOUSE_AUDIT,
        "KEY_FILE": str(tmp_path / "keys" / "audit.key"),
        "CHECKPOINT_STORE": str(tmp_path / "witness"),
        "CHECKPOINT_ENTRIES": 50,
        "CHECKPOINT_SECONDS": 3600,
    }
    from audit.keys import forget_signer
    from audit.witness import _witness

    forget_signer()
    _witness.cache_clear()
    yield
    forget_signer()
    _witness.cache_clear()


def mth(hashes: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash, written out independently of the sequencer's frontier."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def check_log() -> None:
    """Every leaf chained, positioned and hashed right, globally and per tenant; heads' roots equal
    the RFC 6962 roots over the leaves; every stored node is the hash of its subtree."""
    leaves = list(AuditLeaf.objects.order_by("seq"))
    assert [leaf.seq for leaf in leaves] == list(range(len(leaves)))
    prev, per_tenant = "0" * 64, {}
    for leaf in leaves:
        data = bytes(leaf.leaf)
        record = json.loads(data)
        assert bytes(leaf.leaf_hash) == leaf_hash(data) and canonical(record) == data
        assert record["seq"] == leaf.seq and record["prev"] == prev
        prev = bytes(leaf.leaf_hash).hex()
        if leaf.tenant_id is not None:
            chain = per_tenant.setdefault(leaf.tenant_id, [])
            assert record["tenant_seq"] == len(chain)
            assert record["tenant_prev"] == (bytes(chain[-1].leaf_hash).hex() if chain else "0" * 64)
            chain.append(leaf)
    hashes = [bytes(leaf.leaf_hash) for leaf in leaves]
    head = AuditHead.objects.get(tree=GLOBAL)
    assert head.size == len(leaves)
    assert head_root(head) == mth(hashes)
    for tenant_id, chain in per_tenant.items():
        tenant_head = AuditHead.objects.get(tree=tenant_tree(tenant_id))
        assert head_root(tenant_head) == mth([bytes(x.leaf_hash) for x in chain])
    for node in AuditNode.objects.filter(tree=GLOBAL):
        size = 1 << node.level
        assert bytes(node.hash) == mth(hashes[node.index * size:(node.index + 1) * size])


def test_an_action_and_its_entry_commit_together_or_not_at_all(tenant, author, recording):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            submit(tenant, author, {"id": "a"})
            raise RuntimeError("the action fails after its audit entry was written")
    assert Run.objects.count() == 0
    assert not AuditEntry.objects.filter(event="run.submitted").exists()


def test_a_failing_audit_write_fails_the_action(tenant, author, recording):
    if connection.vendor != "postgresql":
        pytest.skip("injects the failure with a PostgreSQL trigger")
    with connection.cursor() as cursor:
        cursor.execute("CREATE FUNCTION gh_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit storage down'; END $$")
        cursor.execute("CREATE TRIGGER gh_test_fail BEFORE INSERT ON audit_auditentry FOR EACH ROW EXECUTE FUNCTION gh_test_fail()")
    try:
        with pytest.raises(Exception, match="audit storage down"):
            submit(tenant, author, {"id": "a"})
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER gh_test_fail ON audit_auditentry")
            cursor.execute("DROP FUNCTION gh_test_fail()")
    assert Run.objects.count() == 0  # fail closed: no audit, no change


def test_denials_and_refusals_are_recorded_even_though_nothing_else_changes(api, author, make_member, other_tenant, recording):
    assert api().get("/api/v1/runs").status_code == 401
    outsider = make_member(other_tenant, "analyst")
    assert api(outsider).post("/api/v1/runs", data="x: 1", content_type="application/yaml").status_code == 403
    assert api(author).get("/api/v1/runs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api(author).post("/api/v1/runs", data="tasks: [", content_type="application/yaml").status_code == 400
    denied = list(AuditEntry.objects.filter(event="access.denied").order_by("id"))
    assert [e.body["error"] for e in denied] == ["not_authenticated", "permission_denied", "not_found"]
    assert denied[1].actor_id == outsider.id and denied[1].tenant_id == other_tenant.id
    assert denied[2].body["where"]["request_id"] and denied[2].body["actor"]["auth"] == "token"
    refused = AuditEntry.objects.get(event="request.refused")
    assert refused.body["error"] == "spec_invalid" and refused.outcome == "error"


def test_logins_logouts_and_failed_logins_are_recorded(client, author):
    page = client.get("/login/")
    assert page.status_code == 200
    bad = client.post("/login/", {"username": "author", "password": "wrong"})
    assert bad.status_code == 200
    good = client.post("/login/", {"username": "author", "password": "pw"})
    assert good.status_code == 302
    client.post("/logout/")
    events = list(AuditEntry.objects.filter(event__startswith="auth.").order_by("id").values_list("event", "outcome"))
    assert events == [("auth.login_failed", "denied"), ("auth.login", "success"), ("auth.logout", "success")]
    failed = AuditEntry.objects.get(event="auth.login_failed")
    assert failed.body["data"]["username"] == hmac_value("author")


def test_secrets_never_appear_in_clear(tenant, tmp_path):
    from audit.export import audit_export

    audit_append(event="member.created", tenant=tenant, data={"token": "s3cr3t-token", "nested": {"password": "hunter2"}},
                 secrets={"secret_id": "approle-secret"})
    integrate()
    audit_export(tmp_path / "bundle")
    exported = b"".join(p.read_bytes() for p in (tmp_path / "bundle").rglob("*") if p.is_file())
    assert b"hunter2" not in exported and b"s3cr3t-token" not in exported and b"approle-secret" not in exported
    with connection.cursor() as cursor:
        cursor.execute("SELECT CAST(body AS TEXT) FROM audit_auditentry")
        bodies = " ".join(row[0] for row in cursor.fetchall())
    leaves = b" ".join(bytes(x) for x in AuditLeaf.objects.values_list("leaf", flat=True))
    for secret in ("s3cr3t-token", "hunter2", "approle-secret"):
        assert secret not in bodies and secret.encode() not in leaves
    assert hmac_value("hunter2") in bodies


def test_floats_and_unknown_events_are_refused():
    with pytest.raises(ValueError, match="floats"):
        audit_append(event="tenant.created", data={"ratio": 0.5})
    with pytest.raises(ValueError, match="unknown audit event"):
        audit_append(event="made.up")
    assert AuditEntry.objects.count() == 0


def test_engine_transitions_are_recorded(tenant, author, recording):
    run = submit(tenant, author, {"id": "a"}, {"id": "b", "needs": ["a"]})
    moves = AuditEntry.objects.filter(event="task.transition", tenant=tenant)
    assert {(e.body["data"]["task"], e.body["data"]["to"]) for e in moves} == {("a", "QUEUED")}
    assert AuditEntry.objects.filter(event="run.submitted", object_id=str(run.id)).count() == 1


def test_the_sequencer_chains_entries_globally_and_per_tenant(make_tenant):
    t1, t2 = make_tenant(), make_tenant()
    for i in range(130):
        audit_append(event="tenant.created", tenant=[t1, t2, None][i % 3], data={"i": i})
    assert integrate(batch=40) == 40
    while integrate(batch=40):
        pass
    assert AuditPending.objects.count() == 0
    check_log()
    # the two tenant creations come first (made by make_tenant)
    assert AuditHead.objects.get(tree=tenant_tree(t1.id)).size == 44 + 1


def test_checkpoints_are_signed_and_kept_outside_the_database(make_tenant):
    tenant = make_tenant()
    for i in range(120):
        audit_append(event="tenant.created", tenant=tenant, data={"i": i})
    integrate()
    checkpoints = list(AuditCheckpoint.objects.filter(tree=GLOBAL).order_by("size"))
    assert checkpoints, "a checkpoint every 50 entries"
    from audit.models import AuditKey

    verifiers = [NoteVerifier(k) for k in AuditKey.objects.values_list("verifier_key", flat=True)]
    outside = get_witness().read_all(GLOBAL)
    for checkpoint in checkpoints:
        text, names = open_note(checkpoint.note.encode(), verifiers)
        parsed = parse_checkpoint(text)
        assert parsed.size == checkpoint.size and parsed.root.hex() == checkpoint.root and parsed.time is not None
        assert outside[checkpoint.size] == checkpoint.note.encode()
    hashes = [bytes(h) for h in AuditLeaf.objects.order_by("seq").values_list("leaf_hash", flat=True)]
    last = checkpoints[-1]
    assert mth(hashes[: last.size]).hex() == last.root


def test_eight_concurrent_writers_leave_one_valid_chain(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL")
    tenants = [make_tenant() for _ in range(3)]
    writers, per_writer = 8, 500
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(per_writer):
                with transaction.atomic():
                    audit_append(event="tenant.created", tenant=tenants[(n + i) % 3], data={"writer": n, "i": i})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def sequence() -> None:
        try:
            while not stop.is_set():
                integrate(batch=500)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    sequencers = [threading.Thread(target=sequence) for _ in range(2)]  # two racing sequencers
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in sequencers + threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in sequencers:
        t.join()
    assert not errors, errors
    while integrate():
        pass
    assert AuditLeaf.objects.filter(entry__event="tenant.created", entry__body__data__writer__isnull=False).count() == writers * per_writer
    check_log()


def test_checkpoints_can_be_kept_in_an_s3_bucket(settings, monkeypatch, make_tenant):
    import boto3

    from audit.witness import _witness
    from tests.servers import MotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with MotoServer() as moto:
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint_url)  # boto3 reads it for every client
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url)
        s3.create_bucket(Bucket="checkpoints")
        settings.GATEHOUSE_AUDIT = {**settings.GATEHOUSE_AUDIT, "CHECKPOINT_STORE": "s3://checkpoints/gatehouse"}
        _witness.cache_clear()
        tenant = make_tenant()
        for i in range(60):
            audit_append(event="tenant.created", tenant=tenant, data={"i": i})
        integrate()
        checkpoint = AuditCheckpoint.objects.filter(tree=GLOBAL).order_by("size").first()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="checkpoints")["Contents"]]
        assert f"gatehouse/global/{checkpoint.size:020d}.note" in keys
        assert get_witness().read_all(GLOBAL)[checkpoint.size] == checkpoint.note.encode()
        get_witness().write(GLOBAL, checkpoint.size, b"forged")  # immutable: the first copy stays
        assert get_witness().read_all(GLOBAL)[checkpoint.size] == checkpoint.note.encode()
    _witness.cache_clear()


def _prepared_appends() -> list[str]:
    """The statements this session has prepared that insert audit entries."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
                       ['%INSERT INTO "audit_auditentry"%'])
        return [row[0] for row in cursor.fetchall()]


def test_appends_reuse_one_prepared_statement_and_survive_rollbacks_and_reconnects(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    tenant = make_tenant()
    connection.close()  # a fresh session: nothing prepared yet
    first = audit_append(event="tenant.created", tenant=tenant, data={"i": 0})
    # A rolled-back action takes its entry (and queue row) with it, and leaves the statement usable.
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            rolled_back = audit_append(event="tenant.created", tenant=tenant, data={"i": 1})
            raise RuntimeError("the action fails")
    for i in range(2, 6):
        with transaction.atomic():
            audit_append(event="tenant.created", tenant=tenant, data={"i": i})
    assert len(_prepared_appends()) == 1  # parsed and planned once for the session, not per append
    assert not AuditEntry.objects.filter(id=rolled_back.id).exists()
    assert not AuditPending.objects.filter(entry_id=rolled_back.id).exists()
    # A new connection (the old one closed, as CONN_MAX_AGE or a failed health check does) prepares anew.
    connection.close()
    last = audit_append(event="tenant.created", tenant=tenant, data={"i": 6})
    assert len(_prepared_appends()) == 1
    stored = list(AuditEntry.objects.filter(tenant=tenant, event="tenant.created", body__data__i__isnull=False)
                  .order_by("id").values_list("body__data__i", flat=True))
    assert stored == [0, 2, 3, 4, 5, 6]
    assert AuditPending.objects.filter(entry_id__in=[first.id, last.id]).count() == 2
    while integrate():
        pass
    check_log()


def test_the_query_log_sees_each_append_once_with_its_parameters(tenant):
    from django.test.utils import CaptureQueriesContext

    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        entry = audit_append(event="tenant.created", tenant=tenant, data={"logged": "yes"})
    inserts = [q["sql"] for q in captured.captured_queries if "audit_auditentry" in q["sql"]]
    assert len(inserts) == 1
    # outside the capture, appends go on through the unlogged cursor
    again = audit_append(event="tenant.created", tenant=tenant, data={"logged": "no"})
    assert AuditEntry.objects.filter(id__in=[entry.id, again.id]).count() == 2


def test_an_entry_committed_out_of_id_order_is_still_placed(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("two concurrent writing transactions need PostgreSQL")
    tenant = make_tenant()
    written, release, done = threading.Event(), threading.Event(), []

    def slow_action() -> None:
        try:
            with transaction.atomic():
                done.append(audit_append(event="tenant.created", tenant=tenant, data={"slow": 1}))
                written.set()
                release.wait(30)
        finally:
            connections.close_all()

    slow = threading.Thread(target=slow_action)
    slow.start()
    assert written.wait(30)
    fast = audit_append(event="tenant.created", tenant=tenant, data={"fast": 1})  # commits first
    assert fast.id > done[0].id
    while integrate():
        pass
    assert AuditLeaf.objects.filter(entry_id=fast.id).exists()
    assert not AuditLeaf.objects.filter(entry_id=done[0].id).exists()  # not committed yet: not placed
    release.set()
    slow.join(30)
    while integrate():
        pass
    placed = dict(AuditLeaf.objects.filter(entry_id__in=[fast.id, done[0].id]).values_list("entry_id", "seq"))
    assert placed[done[0].id] > placed[fast.id]  # placed later, in the order the log saw the commits
    assert AuditPending.objects.count() == 0
    check_log()


def test_a_batch_that_fails_leaves_its_entries_queued(make_tenant):
    tenant = make_tenant()
    while integrate():
        pass
    placed_before = AuditLeaf.objects.count()
    good = audit_append(event="tenant.created", tenant=tenant, data={"i": 1})
    orphan = audit_append(event="tenant.created", tenant_id=tenant.id + 1000, data={"i": 2})  # no such tenant
    with pytest.raises(RuntimeError, match="not found"):
        integrate()
    # the batch rolled back whole: both still queued, nothing placed
    assert set(AuditPending.objects.values_list("entry_id", flat=True)) == {good.id, orphan.id}
    assert AuditLeaf.objects.count() == placed_before
