"""Shared fixtures. Ray starts once per test session (it takes 5–11 s here) with a small cluster."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
os.environ.pop("RAY_ADDRESS", None)  # tests never join a cluster that happens to run on the machine
for _secret in ("OPENAI_API_KEY", "LLM_BASE_URL", "LLM_MODEL_NAME"):
    os.environ.pop(_secret, None)  # tests set what they need; a developer's .env must not leak in


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole test session (started on first use)."""
    import ray

    from hybrid.core.ray_utils import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
