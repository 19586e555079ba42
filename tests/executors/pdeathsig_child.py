"""Run by test_executor_local.py: start `sleep 60` with a LocalExecutor, print the handle data,
then sit there until the test SIGKILLs this process.

usage: python pdeathsig_child.py WORKDIR [--no-pdeathsig]
"""

import json
import sys
import time

import executors.local as local
from executors.base import JobRequest

if "--no-pdeathsig" in sys.argv:
    local._PRCTL = None  # control case: show the test can tell the difference
    local._SETPRIV = None

if "--preexec" in sys.argv:
    local._SETPRIV = None  # the fallback where setpriv is missing: prctl in a preexec_fn

ex = local.LocalExecutor()
handle = ex.submit(JobRequest(job_key="pdeathsig/sleep/1", argv=("sleep", "60"), env={}, workdir=sys.argv[1]))
print(json.dumps(handle.data), flush=True)
time.sleep(120)
