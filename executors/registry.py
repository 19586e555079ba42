"""Registry of executor backends, by name.

``get_executor(name, **config)`` returns ONE instance per (name, config) per process: stateful
executors depend on it (the ``local`` executor remembers the processes it started, and only the
instance that started a job can report its exit status). Tests can reset with :func:`clear_cache`.

Pure Python: must not import Django.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from .base import Executor, ExecutorError
from .batch import BatchExecutor
from .local import LocalExecutor
from .slurm import SlurmExecutor

__all__ = ["clear_cache", "get_executor", "known_backends", "register", "unregister"]

ExecutorFactory = Callable[..., Executor]

_lock = threading.Lock()
_factories: dict[str, ExecutorFactory] = {}
_instances: dict[tuple[str, str], Executor] = {}


def register(name: str, factory: ExecutorFactory) -> None:
    """Make ``name`` available; ``factory(**config)`` builds the executor. Registering a name
    again replaces its factory and drops its cached instances."""
    if not isinstance(name, str) or not name:
        raise ValueError("backend name must be a non-empty string")
    with _lock:
        _factories[name] = factory
        for key in [k for k in _instances if k[0] == name]:
            del _instances[key]


def unregister(name: str) -> None:
    with _lock:
        _factories.pop(name, None)
        for key in [k for k in _instances if k[0] == name]:
            del _instances[key]


def known_backends() -> frozenset[str]:
    with _lock:
        return frozenset(_factories)


def _config_key(config: dict[str, Any]) -> str:
    # A digest, not the text: a configuration may carry a tenant's credentials (kept in memory only).
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()


def get_executor(name: str, **config: Any) -> Executor:
    """The executor registered as ``name``, built with ``config`` on first use, then cached.

    Raises ``ExecutorError(code="unknown_backend")`` for a name nobody registered.
    """
    key = (name, _config_key(config))
    with _lock:
        cached = _instances.get(key)
        if cached is not None:
            return cached
        factory = _factories.get(name)
        if factory is None:
            known = ", ".join(sorted(_factories)) or "none"
            raise ExecutorError("unknown_backend", f"unknown executor backend {name!r} (known: {known})")
        executor = factory(**config)
        _instances[key] = executor
        return executor


def clear_cache() -> None:
    """Forget every cached instance (tests)."""
    with _lock:
        _instances.clear()


register("local", LocalExecutor)
# Config: cluster, partition, defaults, ssh ({host, known_hosts, user, port, identity_file}) or None for
# this host, work_root, submit_rate, submit_burst, poll_interval, ... (see executors.slurm.SlurmExecutor).
register("slurm", SlurmExecutor)
# Config: job_queue, job_definition, region, endpoint_url, credentials (what executors.credentials returns),
# job_role_arn, artefact_bucket, artefact_prefix, tenant, submit_rate, ... (see executors.batch.BatchExecutor).
register("batch", BatchExecutor)
