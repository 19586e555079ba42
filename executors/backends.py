"""A tenant's backend configuration: the YAML document a tenant admin writes, checked and stored.

    apiVersion: gatehouse/v1
    kind: Backends
    backends:
      - name: hpc                      # what `backend:` in a task names
        kind: slurm                    # local | slurm | batch
        max_classification: SECRET     # a label; the backend hosts what this label dominates
        tags: [on-prem, gpu]
        capacity: 20                   # tasks at once (absent: no limit)
        preference: 10                 # higher first
        enabled: true
        config: {cluster: hpc1, login_node: login.hpc.example, partition: batch}

`backends_configure` replaces the whole configuration in one transaction, audited with what it
was and what it is. The file is loaded with the workflow loader's limits (size, depth, aliases,
UTF-8), checked against executors/schemas/backends-v1.json, then: names unique, every ceiling a
label (stored canonical), and no key in `config` that names a credential (those go to
executors/credentials.py, never to the database).

A tenant without a configuration has one built-in backend, `local`, capped at the level of
settings.GATEHOUSE_BACKEND_DEFAULT_CEILING (`builtin_backends`).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction
from jsonschema import Draft202012Validator

from audit.services import audit_append
from gateway.clearances import label_registry
from gateway.errors import ErrorCode, GatehouseError
from gateway.labels import Label, LabelError, parse_canonical, parse_label
from gateway.spec import Limits
from gateway.spec.yamlload import Fatal, decode_source, load_yaml, pointer_join

from .models import BackendConfiguration, BackendKind, TenantBackend

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "backends-v1.json"
BUILTIN_NAME = "local"
# Executors that only run with a tenant's configuration (where to submit, with which credentials).
NEEDS_CONFIGURATION = frozenset({"slurm", "batch"})

# A key in `config` whose name says it holds a secret is refused: credentials are stored elsewhere.
_CREDENTIAL_KEY = re.compile(
    r"pass(word|phrase)?|secret|token|jwt|credential|private|api[_-]?key|access[_-]?key|session[_-]?key|ssh[_-]?key"
    r"|^key$|_key$", re.IGNORECASE)


@dataclass(frozen=True)
class Backend:
    """One backend a tenant may place tasks on (a row, or the built-in default).

    `level_only`: the built-in backend of a tenant without configuration is the gateway's own host,
    which already holds every label the tenant uses (database, artefacts); its ceiling caps the
    level only. A configured backend's ceiling is compared as a label (`dominates`)."""

    name: str
    kind: str
    ceiling: Label
    tags: frozenset[str] = frozenset()
    capacity: int | None = None
    preference: int = 0
    enabled: bool = True
    config: dict = field(default_factory=dict, hash=False, compare=False)
    level_only: bool = False

    @property
    def ceiling_banner(self) -> str:
        return str(self.ceiling)


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def load_backends_schema() -> dict:
    return copy.deepcopy(_validator().schema)


def default_ceiling() -> Label:
    return parse_label(settings.GATEHOUSE_BACKEND_DEFAULT_CEILING, registry=label_registry())


def builtin_backends() -> list[Backend]:
    """What a tenant without configuration has, as before backends were configurable: `local`, and
    any other executor registered in this process (named explicitly) that needs no configuration of
    the tenant's (a cluster or a queue, and credentials: not `slurm` or `batch`), capped at the
    default ceiling's level; a task that names none goes to `local` (it is preferred)."""
    from .registry import known_backends

    ceiling = default_ceiling()
    return [Backend(name=BUILTIN_NAME, kind=BackendKind.LOCAL.value, ceiling=ceiling, preference=1, level_only=True)] + [
        Backend(name=name, kind=name, ceiling=ceiling, level_only=True)
        for name in sorted(known_backends() - {BUILTIN_NAME} - NEEDS_CONFIGURATION)
    ]


def _from_row(row: TenantBackend) -> Backend | None:
    try:
        ceiling = parse_canonical(row.max_classification, registry=label_registry())
    except LabelError:
        return None  # a policy changed under a stored ceiling: the backend hosts nothing until fixed
    return Backend(name=row.name, kind=row.kind, ceiling=ceiling, tags=frozenset(row.tags), capacity=row.capacity,
                   preference=row.preference, enabled=row.enabled, config=dict(row.config))


def tenant_backends(tenant_id: int) -> tuple[list[Backend], bool]:
    """The tenant's backends as configured now, and whether it has a configuration at all."""
    if not BackendConfiguration.objects.filter(tenant_id=tenant_id).exists():
        return builtin_backends(), False
    rows = TenantBackend.objects.filter(tenant_id=tenant_id).order_by("name")
    return [b for b in map(_from_row, rows) if b is not None], True


# --------------------------------------------------------------------------- the document


def _issue(code: str, message: str, line: int | None, path: str = "") -> dict:
    return {"code": code, "message": message, "line": line, "path": path}


def _refuse(issues: list[dict]) -> GatehouseError:
    lines = "; ".join(f"line {i['line']}: {i['message']}" if i["line"] else i["message"] for i in issues[:5])
    return GatehouseError(ErrorCode.BACKENDS_INVALID,
                          f"The backend configuration has {len(issues)} error(s): {lines}", detail=issues)


def _credential_keys(value: Any, pointer: str) -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            here = pointer_join(pointer, key)
            if _CREDENTIAL_KEY.search(str(key)):
                found.append(here)
            found += _credential_keys(inner, here)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _credential_keys(inner, pointer_join(pointer, index))
    return found


def _where(pointer: str) -> str:
    return ".".join(p for p in pointer.strip("/").split("/") if p) or "the document"


def backends_parse(source: bytes | str) -> list[dict]:
    """The backends a configuration file declares, normalised (ceiling canonical), or
    GatehouseError(backends_invalid) listing every problem with its line."""
    limits = Limits(max_bytes=settings.GATEHOUSE_BACKENDS_MAX_BYTES, max_tasks=1000, max_depth=20,
                    max_nodes=50_000, max_scalar_len=10_000)
    try:
        _, text = decode_source(source, limits)
        loaded = load_yaml(text, limits)
    except Fatal as exc:
        message = exc.issue.message
        if exc.issue.code == "not_mapping":
            message = "the file must be a mapping with apiVersion, kind and backends"
        raise _refuse([_issue(exc.issue.code, message, exc.issue.line)]) from None
    document, lines = loaded.data, loaded.lines
    issues = [_issue(i.code, i.message, i.line, i.path) for i in loaded.issues]
    for error in sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        pointer = ""
        for token in error.absolute_path:
            pointer = pointer_join(pointer, token)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for key in (k for k in error.instance if k not in known):  # one issue per key, on its own line
                at = pointer_join(pointer, key)
                issues.append(_issue("schema", f"unknown key {key!r} in {_where(pointer)}", lines.line(at), at))
            continue
        issues.append(_issue("schema", f"{_where(pointer)}: {error.message[:300]}", lines.line(pointer), pointer))
    if issues:
        raise _refuse(issues)
    seen: dict[str, int | None] = {}
    backends = []
    for index, raw in enumerate(document["backends"]):
        at = f"/backends/{index}"
        name = raw["name"]
        if name in seen:
            issues.append(_issue("duplicate_backend", f"backend {name!r} is declared twice (first on line {seen[name]})",
                                 lines.line(f"{at}/name"), f"{at}/name"))
        seen.setdefault(name, lines.line(f"{at}/name"))
        try:
            ceiling = parse_label(raw["max_classification"], registry=label_registry())
        except LabelError as exc:
            issues.append(_issue("label_invalid", f"backend {name!r}: max_classification is not a label: {exc}",
                                 lines.line(f"{at}/max_classification"), f"{at}/max_classification"))
            ceiling = None
        for pointer in _credential_keys(raw.get("config", {}), f"{at}/config"):
            issues.append(_issue("credential_in_config",
                                 f"backend {name!r}: {_where(pointer)} looks like a credential; credentials are "
                                 f"stored with PUT /api/v1/tenant/backends/{name}/credentials, never in the configuration",
                                 lines.line(pointer), pointer))
        backends.append({
            "name": name, "kind": raw["kind"],
            "max_classification": ceiling.canonical() if ceiling is not None else "",
            "tags": sorted(raw.get("tags", [])), "capacity": raw.get("capacity"),
            "preference": raw.get("preference", 0), "enabled": raw.get("enabled", True),
            "config": copy.deepcopy(raw.get("config", {})),
        })
    if issues:
        raise _refuse(issues)
    return backends


def _snapshot(tenant_id: int) -> list[dict] | None:
    if not BackendConfiguration.objects.filter(tenant_id=tenant_id).exists():
        return None
    return [
        {"name": r.name, "kind": r.kind, "max_classification": r.max_classification, "tags": r.tags,
         "capacity": r.capacity, "preference": r.preference, "enabled": r.enabled, "config": r.config}
        for r in TenantBackend.objects.filter(tenant_id=tenant_id).order_by("name")
    ]


def _json_safe(value: Any) -> Any:
    """Audit data holds no floats (canonical JSON): they are written as text."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return repr(value) if isinstance(value, float) else value


def backends_configure(*, tenant, actor, source: bytes | str) -> BackendConfiguration:
    """Replace the tenant's backend configuration. Checked first (400 backends_invalid, with lines);
    then one transaction writes the document and the rows and audits before and after."""
    backends = backends_parse(source)
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    with transaction.atomic():
        document = BackendConfiguration.objects.select_for_update().filter(tenant=tenant).first()
        before = _snapshot(tenant.id)
        if document is None:
            document = BackendConfiguration(tenant=tenant, revision=1)
        else:
            document.revision += 1
        document.source, document.digest, document.updated_by = text, digest, actor
        document.save()
        TenantBackend.objects.filter(tenant=tenant).delete()
        TenantBackend.objects.bulk_create([TenantBackend(tenant=tenant, **b) for b in backends])
        audit_append(event="tenant.backends_changed", tenant=tenant, actor=actor, object_type="backendconfiguration",
                     object_id=str(document.pk),
                     data={"revision": document.revision, "digest": digest, "before": _json_safe(before),
                           "after": _json_safe(_snapshot(tenant.id))})
    return document


def backends_document(tenant) -> tuple[str, BackendConfiguration | None]:
    """The configuration as written, or (for a tenant without one) the built-in default as YAML."""
    document = BackendConfiguration.objects.filter(tenant=tenant).first()
    if document is not None:
        return document.source, document
    builtin = builtin_backends()[0]
    text = "# No configuration yet: the built-in backend (its ceiling caps the level only).\n" + yaml.safe_dump(
        {"apiVersion": "gatehouse/v1", "kind": "Backends",
         "backends": [{"name": builtin.name, "kind": str(builtin.kind), "max_classification": builtin.ceiling_banner}]},
        sort_keys=False)
    return text, None


def tenant_backend_names(tenant_id: int) -> frozenset[str]:
    backends, _ = tenant_backends(tenant_id)
    return frozenset(b.name for b in backends)
