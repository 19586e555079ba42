"""The configured artefact store, and recording artefacts against task attempts."""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from .artefacts import ArtefactStore, store_from_config


@lru_cache(maxsize=1)
def _store(key: str) -> ArtefactStore:
    return store_from_config(settings.GATEHOUSE_ARTEFACT_STORE)


def get_store() -> ArtefactStore:
    # Keyed by the configuration so tests that override the setting get their own store.
    return _store(repr(sorted(settings.GATEHOUSE_ARTEFACT_STORE.items())))


def tenant_key(tenant_id: int) -> str:
    """The store's namespace of one tenant."""
    return f"t{tenant_id}"


def artefact_content_response(artefact, actor, *, content_type: str, disposition: str = "attachment"):
    """An artefact's bytes as a streamed response (the API's content view and the portal's), read
    through the store's digest check and audited (`artefact.read`). The caller has read `artefact`
    through the scoped selectors. 410 when the store no longer holds it."""
    from django.http import StreamingHttpResponse

    from audit.services import audit_append

    from .artefacts import ArtefactError
    from .errors import ErrorCode, GatehouseError

    store, tenant = get_store(), tenant_key(artefact.tenant_id)
    if not store.exists(tenant, artefact.digest):
        raise GatehouseError(ErrorCode.ARTEFACT_UNAVAILABLE, "The artefact's content is not in the store.", status=410)

    def chunks():
        try:
            yield from store.iter_chunks(tenant, artefact.digest)
        except ArtefactError:
            return  # the headers are gone: the response ends short and the client's digest check fails

    audit_append(event="artefact.read", tenant_id=artefact.tenant_id, actor=actor, obj=artefact,
                 data={"run": str(artefact.run_id), "task": artefact.task.key, "name": artefact.name,
                       "digest": artefact.digest})
    response = StreamingHttpResponse(chunks(), content_type=content_type)
    response["Content-Length"] = str(artefact.size)
    response["Digest"] = f"sha-256={artefact.digest}"
    response["X-Content-SHA256"] = artefact.digest
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = f'{disposition}; filename="{artefact.task.key}-{artefact.name}"'
    return response
