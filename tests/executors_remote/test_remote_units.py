"""Small pieces of the remote path that need no server: credentials reach only the Slurm tools'
environment, never a cache key; a collect message round-trips a job status."""
from __future__ import annotations

from executors import registry
from executors.base import JobState, JobStatus
from executors.slurm import SlurmExecutor
from executors.slurm_tracker import SlurmTracker
from gateway.remote import status_from_dict, status_to_dict


def test_a_slurm_jwt_goes_to_the_tools_environment_only():
    with_jwt = SlurmExecutor(cluster="unit-jwt", driver="cli", credentials={"slurm_jwt": "s3cret-token"})
    without = SlurmExecutor(cluster="unit-nojwt", driver="cli")
    try:
        assert with_jwt.commands.env()["SLURM_JWT"] == "s3cret-token"
        assert "SLURM_JWT" not in without.commands.env()
        assert "s3cret-token" not in repr(with_jwt.commands.squeue_argv([]))
    finally:
        SlurmTracker._registry.pop("unit-jwt", None)
        SlurmTracker._registry.pop("unit-nojwt", None)


def test_the_registry_keys_instances_by_a_digest_of_their_configuration():
    key = registry._config_key({"cluster": "c", "credentials": {"aws_secret_access_key": "s3cret"}})
    assert "s3cret" not in key and len(key) == 64
    assert key != registry._config_key({"cluster": "c", "credentials": {"aws_secret_access_key": "other"}})


def test_a_status_survives_the_collect_message():
    status = JobStatus(JobState.FAILED, -9, "preempted by a higher-priority job", interrupted=True)
    assert status_from_dict(status_to_dict(status)) == status
    plain = JobStatus(JobState.SUCCEEDED, 0, "exit code 0")
    assert status_from_dict(status_to_dict(plain)) == plain and not plain.interrupted
