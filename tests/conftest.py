import os
import sys

# Task functions live in tests/engine_funcs.py; worker processes (spawn) inherit sys.path.
sys.path.insert(0, os.path.dirname(__file__))
# A shared cache set in the environment would restore tasks that tests expect to run.
os.environ.pop("TASKGRAPH_CACHE", None)
os.environ.pop("TASKGRAPH_CACHE_KEY", None)


import pytest


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster: two worker processes on 127.0.0.1, made once."""
    distributed = pytest.importorskip("distributed")
    import dask

    # A task that kills its worker fails at once instead of being retried.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=":0", silence_logs=40,
        )
        with distributed.Client(cluster) as client:
            yield client
        cluster.close()
