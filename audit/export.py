"""Export a signed audit bundle: the entries of one tree (the global log, or one tenant's),
the signed checkpoints (from outside the database where they are kept there), the proofs that
bind the entries to them, the public keys, and a signed manifest. Streams: entries go from a
server-side cursor to disk, never all in memory."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from . import merkle
from .bundle import BundleWriter
from .keys import get_signer
from .models import AuditCheckpoint, AuditHead, AuditKey, AuditLeaf, AuditNode
from .sequencer import GLOBAL, ZERO, checkpoint_now, origin_of, tenant_tree
from .services import audit_append
from .witness import get_witness


class ExportError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _Nodes:
    """Perfect-subtree hashes of one tree from the database, memoised for the export."""

    def __init__(self, tree: str, tenant_id):
        self.tree, self.tenant_id, self.cache = tree, tenant_id, {}

    def __call__(self, start: int, size: int) -> bytes:
        key = (start, size)
        if key not in self.cache:
            level = size.bit_length() - 1
            if level == 0:
                leaves = AuditLeaf.objects.filter(tenant_id=self.tenant_id, tenant_seq=start) if self.tenant_id else \
                    AuditLeaf.objects.filter(seq=start)
                value = leaves.values_list("leaf_hash", flat=True).first()
            else:
                value = AuditNode.objects.filter(tree=self.tree, level=level, index=start // size).values_list(
                    "hash", flat=True).first()
            if value is None:
                raise ExportError("log_incomplete", f"the log has no hash for [{start}, {start + size}) of {self.tree}")
            self.cache[key] = bytes(value)
        return self.cache[key]


def audit_export(directory: str | Path, *, tenant=None, since=None, until=None, actor=None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a bundle for the global log (tenant None) or one tenant's log; since/until select
    entries by the time the log placed them (which never goes backwards)."""
    checkpoint_now()
    tree = tenant_tree(tenant.id) if tenant else GLOBAL
    head = AuditHead.objects.filter(tree=tree).first()
    if head is None or head.size == 0:
        raise ExportError("empty_log", "there is nothing in this log yet")
    size = head.checkpoint_size
    position = "tenant_seq" if tenant else "seq"
    leaves = AuditLeaf.objects.filter(tenant=tenant) if tenant else AuditLeaf.objects.all()
    begin = leaves.filter(integrated_at__lt=since).count() if since else 0
    end = leaves.filter(integrated_at__lt=until).count() if until else size
    end = min(end, size)
    begin = min(begin, end)
    outside = get_witness().read_all(tree)
    if outside and max(outside) > size:
        raise ExportError("log_truncated", f"a checkpoint kept outside the database has {max(outside)} entries; "
                          f"the database has {size}: entries were removed")
    nodes = _Nodes(tree, tenant.id if tenant else None)
    start_prev = nodes(begin - 1, 1).hex() if begin else ZERO
    writer = BundleWriter(
        directory, origin=origin_of(tree, tenant.slug if tenant else None), tree="tenant" if tenant else "global",
        tenant=tenant.slug if tenant else None, begin=begin, seq_field=position,
        prev_field="tenant_prev" if tenant else "prev", start_prev=start_prev,
        max_integration_lag_seconds=settings.GATEHOUSE_AUDIT["MAX_INTEGRATION_LAG_SECONDS"],
        exported_by=actor.get_username() if actor is not None else "server",
    )
    written = 0
    rows = leaves.filter(**{f"{position}__gte": begin, f"{position}__lt": end}).order_by(position)
    with transaction.atomic():  # one snapshot, and a server-side cursor on PostgreSQL
        for data in rows.values_list("leaf", flat=True).iterator(chunk_size=5000):
            writer.write_entry(bytes(data))
            written += 1
            if progress is not None and written % 10000 == 0:
                progress(written, end - begin)
    if progress is not None:
        progress(written, end - begin)
    notes = {c.size: c.note.encode("utf-8") for c in AuditCheckpoint.objects.filter(tree=tree, size__gte=begin, size__lte=size)}
    notes.update({s: n for s, n in outside.items() if begin <= s <= size})  # the copy outside the database wins
    sizes = sorted(notes)
    for checkpoint_size in sizes:
        writer.add_checkpoint(checkpoint_size, notes[checkpoint_size])
    left, right = merkle.range_proof(begin, end, size, nodes)
    writer.set_range_proof(size, left, right)
    for m, n in zip(sizes, sizes[1:]):
        writer.add_consistency(m, n, merkle.consistency_proof(m, n, nodes))
    writer.add_keys(list(AuditKey.objects.order_by("id").values_list("verifier_key", flat=True)))
    path = writer.close(get_signer())
    audit_append(event="audit.exported", actor=actor, tenant=tenant,
                 data={"tree": tree, "begin": begin, "end": end, "checkpoint": size, "entries": written})
    return {"path": str(path), "tree": tree, "begin": begin, "end": end, "checkpoint_size": size, "entries": written,
            "checkpoints": len(sizes)}
