"""Gatehouse executors: the backends that run workflow tasks, behind one interface.

* :mod:`executors.base`: the interface (:class:`Executor`) and its value types.
* :mod:`executors.local`: the ``local`` backend (subprocesses of the worker).
* :mod:`executors.registry`: look a backend up by name (``get_executor("local")``).

Pure Python: nothing in this package imports Django (``apps.py`` aside, which only Django loads).
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
