"""The sequencer: places committed audit entries in the log, in batches.

Actions only INSERT their entry (no lock, so concurrent actions never queue on the log). The
sequencer, one at a time under the global head row's lock, takes the queued entries in commit-
visible order, gives each its position in the global log and in its tenant's log, chains it to
the previous entry's hash in both, stores the canonical leaf bytes and the hashes of the Merkle
subtrees it completes, and signs a checkpoint every N entries or T seconds. The window between
an action's commit and its entry's integration is the sequencer's interval plus one batch.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from gateway import dbscope
from gateway.models import Tenant

from .canonical import canonical, rfc3339
from .merkle import CompactRange, leaf_hash, node_hash
from .models import AuditCheckpoint, AuditEntry, AuditHead, AuditLeaf, AuditNode, AuditPending

log = logging.getLogger(__name__)
GLOBAL = "global"
ZERO = "0" * 64


def tenant_tree(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


def head_root(head: AuditHead) -> bytes:
    """The RFC 6962 root of a tree from its head's compact range."""
    return CompactRange.from_hashes(0, head.size, [bytes.fromhex(h) for h in head.frontier]).root()


class _Tree:
    """A tree's head while a batch is placed: appends leaves, collects completed subtrees."""

    def __init__(self, head: AuditHead):
        self.head = head
        self.size = head.size
        self.frontier = [bytes.fromhex(h) for h in head.frontier]
        self.last_hash = head.last_hash
        self.nodes: list[tuple[str, int, int, bytes]] = []  # AuditNode rows: tree, level, index, hash

    def append(self, digest: bytes) -> None:
        n, level, current = self.size, 0, digest
        while (n >> level) & 1:
            current = node_hash(self.frontier.pop(), current)
            level += 1
            self.nodes.append((self.head.tree, level, n >> level, current))
        self.frontier.append(current)
        self.size += 1
        self.last_hash = digest.hex()

    def save(self, integrated_at) -> None:
        self.head.size = self.size
        self.head.frontier = [h.hex() for h in self.frontier]
        self.head.last_hash = self.last_hash
        self.head.last_integrated_at = integrated_at
        self.head.save(update_fields=["size", "frontier", "last_hash", "last_integrated_at"])


_LEAF_COLUMNS = ("seq", "entry_id", "tenant_id", "tenant_seq", "leaf", "leaf_hash", "integrated_at")


def _store(leaves: list[tuple], nodes: list[tuple]) -> None:
    """Insert a batch's leaves (rows in _LEAF_COLUMNS order) and subtree hashes (tree, level,
    index, hash): COPY on PostgreSQL (the ORM's bulk INSERT was most of the sequencer's time),
    bulk_create elsewhere."""
    if connection.vendor != "postgresql":
        AuditLeaf.objects.bulk_create([AuditLeaf(**dict(zip(_LEAF_COLUMNS, x))) for x in leaves], batch_size=2000)
        AuditNode.objects.bulk_create([AuditNode(tree=t, level=lv, index=i, hash=h) for t, lv, i, h in nodes],
                                      batch_size=5000)
        return
    with connection.cursor() as wrapper:
        cursor = wrapper.cursor
        leaf_table = AuditLeaf._meta.db_table
        columns = "seq, entry_id, tenant_id, tenant_seq, leaf, leaf_hash, integrated_at"
        cursor.execute("SELECT row_security_active(%s)", [leaf_table])
        if cursor.fetchone()[0]:
            # PostgreSQL refuses COPY FROM into a table under row-level security (gateway/rls.py),
            # as it is for the application role: one INSERT of the batch's columns as arrays.
            cursor.execute(
                f'INSERT INTO "{leaf_table}" ({columns}) SELECT * FROM unnest(%s::bigint[], %s::bigint[], '
                "%s::bigint[], %s::bigint[], %s::bytea[], %s::bytea[], %s::timestamptz[])",
                [list(column) for column in zip(*leaves)],
            )
        else:
            with cursor.copy(f'COPY "{leaf_table}" ({columns}) FROM STDIN') as copy:
                for row in leaves:
                    copy.write_row(row)
        if nodes:
            with cursor.copy(f'COPY "{AuditNode._meta.db_table}" (tree, level, index, hash) FROM STDIN') as copy:
                for row in nodes:
                    copy.write_row(row)


def _claim(batch: int) -> tuple[int, list[tuple]]:
    """Take up to `batch` queued entries off the queue, the first by id, and return how many were
    taken and the entries among them, in id order: id, tenant id, the tenant's slug, `at` as RFC
    3339 text (canonical.rfc3339), body (decoded). Plain rows, not model instances: building those
    was most of the sequencer's own CPU time. On PostgreSQL one statement does it all (the queue
    rows deleted, the entries read), in the caller's transaction: a batch that fails leaves them
    queued."""
    if connection.vendor != "postgresql":
        ids = list(AuditPending.objects.order_by("entry_id").values_list("entry_id", flat=True)[:batch])
        rows = [(i, tid, slug, rfc3339(at), body) for i, tid, slug, at, body in AuditEntry.objects
                .filter(id__in=ids).order_by("id").values_list("id", "tenant_id", "tenant__slug", "at", "body")]
        AuditPending.objects.filter(entry_id__in=ids).delete()
        return len(ids), rows
    q, e, t = AuditPending._meta.db_table, AuditEntry._meta.db_table, Tenant._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f'WITH q AS (DELETE FROM "{q}" WHERE entry_id IN (SELECT entry_id FROM "{q}" ORDER BY entry_id LIMIT %s) '
            f"RETURNING entry_id) "
            f"SELECT e.id, e.tenant_id, t.slug, "
            # canonical.rfc3339, formatted by PostgreSQL: no datetime made and formatted per entry here.
            f"to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), e.body "
            f'FROM q LEFT JOIN "{e}" e ON e.id = q.entry_id LEFT JOIN "{t}" t ON t.id = e.tenant_id '
            f"ORDER BY q.entry_id",
            [batch],
        )
        rows = cursor.fetchall()
    # Django's PostgreSQL backend loads jsonb as text (JSONField decodes it with json.loads).
    return len(rows), [(i, tid, slug, at, json.loads(body)) for i, tid, slug, at, body in rows if i is not None]


def _head(tree: str, tenant_id=None, *, lock: bool = False) -> AuditHead:
    head, _ = AuditHead.objects.get_or_create(tree=tree, defaults={"tenant_id": tenant_id})
    if lock:
        head = AuditHead.objects.select_for_update().get(tree=tree)
    return head


@dbscope.system_scope()  # every tenant's entries (an export runs it from a web request)
def integrate(*, batch: int | None = None, now=None) -> int:
    """Place up to `batch` queued entries. Returns how many were placed."""
    config = settings.GATEHOUSE_AUDIT
    # A batch never spans more than CHECKPOINT_ENTRIES, so the global log gets a checkpoint at
    # least every CHECKPOINT_ENTRIES entries however large the backlog.
    batch = min(batch or config["SEQUENCER_BATCH"], config["CHECKPOINT_ENTRIES"])
    signed: list[AuditCheckpoint] = []
    with transaction.atomic():
        global_head = _head(GLOBAL, lock=True)  # one sequencer at a time
        taken, entries = _claim(batch)
        now = now or timezone.now()
        if entries:
            trees = {GLOBAL: _Tree(global_head)}
            previous = global_head.last_integrated_at
            integrated_at = max(now, previous) if previous else now  # never goes backwards
            stamp = rfc3339(integrated_at)
            leaves = []
            glob = trees[GLOBAL]
            for entry_id, tenant_id, slug, at, body in entries:
                record = {"v": 1, "seq": glob.size, "prev": glob.last_hash, "at": at,
                          "integrated_at": stamp, "tenant": None, "tenant_seq": None, "tenant_prev": None,
                          **body}
                tenant_state = None
                if tenant_id is not None:
                    if slug is None:
                        raise RuntimeError(f"audit entry {entry_id}: tenant {tenant_id} not found")
                    key = tenant_tree(tenant_id)
                    tenant_state = trees.get(key) or trees.setdefault(key, _Tree(_head(key, tenant_id)))
                    record.update(tenant=slug, tenant_seq=tenant_state.size, tenant_prev=tenant_state.last_hash)
                data = canonical(record)
                digest = leaf_hash(data)
                leaves.append((glob.size, entry_id, tenant_id, record["tenant_seq"], data, digest, integrated_at))
                glob.append(digest)
                if tenant_state is not None:
                    tenant_state.append(digest)
            _store(leaves, [n for t in trees.values() for n in t.nodes])
            for tree in trees.values():
                tree.save(integrated_at)
        signed = _checkpoint_due(now)
    if signed:
        _witness_after_commit(signed)
    return taken


def _checkpoint_due(now, *, force: bool = False) -> list[AuditCheckpoint]:
    """Sign a checkpoint for every tree that grew by CHECKPOINT_ENTRIES, or grew and waited
    CHECKPOINT_SECONDS, since its last one (or any growth, when forced)."""
    config = settings.GATEHOUSE_AUDIT
    every, seconds = config["CHECKPOINT_ENTRIES"], timedelta(seconds=config["CHECKPOINT_SECONDS"])
    heads = AuditHead.objects.filter(size__gt=F("checkpoint_size"))
    signed = []
    for head in heads:
        due = force or head.size - head.checkpoint_size >= every or head.checkpoint_at is None \
            or now - head.checkpoint_at >= seconds
        if due:
            signed.append(_sign(head, now))
    return signed


def _sign(head: AuditHead, now) -> AuditCheckpoint:
    from .keys import get_signer
    from .note import checkpoint_text, sign_note

    signer = get_signer()
    root = head_root(head)
    origin = origin_of(head.tree, head.tenant.slug if head.tenant_id else None)
    text = checkpoint_text(origin, head.size, root, time=now)
    note = sign_note(text, [signer])
    checkpoint = AuditCheckpoint.objects.create(
        tree=head.tree, size=head.size, root=root.hex(), note=note.decode("utf-8"),
        key_id=f"{signer.key_id:08x}", created_at=now,
    )
    head.checkpoint_size, head.checkpoint_at = head.size, now
    head.save(update_fields=["checkpoint_size", "checkpoint_at"])
    return checkpoint


def origin_of(tree: str, tenant_slug: str | None) -> str:
    origin = settings.GATEHOUSE_AUDIT["ORIGIN"]
    return origin if tree == GLOBAL else f"{origin}/tenant/{tenant_slug}"


def _witness_after_commit(checkpoints: list[AuditCheckpoint]) -> None:
    from .witness import get_witness

    witness = get_witness()
    for checkpoint in checkpoints:
        witness.write(checkpoint.tree, checkpoint.size, checkpoint.note.encode("utf-8"))


@dbscope.system_scope()
def checkpoint_now() -> list[AuditCheckpoint]:
    """Place everything queued and sign a checkpoint of every tree that grew (before an export)."""
    while integrate():
        pass
    with transaction.atomic():
        _head(GLOBAL, lock=True)
        signed = _checkpoint_due(timezone.now(), force=True)
    if signed:
        _witness_after_commit(signed)
    return signed
