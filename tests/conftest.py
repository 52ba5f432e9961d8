"""Shared fixtures: one Ray instance per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

# Layer profiles are cached per host: one cache for the whole session (and the CLI runs it starts),
# apart from the user's own, so the tests neither depend on it nor write into it.
os.environ.setdefault("TIERFLOW_CACHE_DIR", tempfile.mkdtemp(prefix="tierflow-test-cache-"))
# A `ray start` cluster someone left on this machine must not capture the session or the CLI runs it
# starts: "local" makes every ray.init here (and tierflow's choice of cluster) start a private instance.
os.environ.setdefault("RAY_ADDRESS", "local")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
