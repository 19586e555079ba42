"""Gatehouse executors: the backends that run workflow tasks, behind one interface.

* :mod:`executors.base`: the interface (:class:`Executor`) and its value types.
* :mod:`executors.local`: the ``local`` backend (subprocesses of the worker).
* :mod:`executors.slurm`: the ``slurm`` backend (batch jobs through Slurm's CLI, here or over SSH),
  with :mod:`executors.slurm_tracker` (one batched status query per cluster per interval).
* :mod:`executors.registry`: look a backend up by name (``get_executor("local")``).

Pure Python: the modules above import no Django. The tenant side is Django and only Django loads it:
``models.py`` and ``backends.py`` (each tenant's backends, configured as YAML), ``credentials.py``
(backend credentials from Vault or the local encrypted store), ``api/`` and ``apps.py``.
"""

from .base import (
    FINISHED_STATES,
    Collected,
    CollectedOutput,
    Executor,
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    OutputRequest,
    StagedInput,
    sanitize_job_key,
)
from .registry import get_executor, known_backends, register

__all__ = [
    "FINISHED_STATES",
    "Collected",
    "CollectedOutput",
    "Executor",
    "ExecutorError",
    "JobHandle",
    "JobRequest",
    "JobState",
    "JobStatus",
    "OutputRequest",
    "StagedInput",
    "get_executor",
    "known_backends",
    "register",
    "sanitize_job_key",
]
