"""Starting or joining Ray the same way everywhere."""

from __future__ import annotations

import os

from hybrid.core.errors import HybridError


def init_ray(num_cpus: int | None = None, include_dashboard: bool = False, **kwargs) -> None:
    """Join the cluster named by RAY_ADDRESS, else start a local Ray (once per process).

    Quiet by default: no usage stats. Local clusters get token auth turned off unless the user set
    RAY_AUTH_MODE, because a token left in ~/.ray by an earlier `ray start` otherwise changes what a
    fresh local cluster expects (RAY-NOTES).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, **kwargs)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # address="local": a new local Ray even when a stale /tmp/ray/ray_current_cluster names a stopped one
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)


def connect_cluster() -> None:
    """Join a running cluster (RAY_ADDRESS, else the one started on this machine) — for services that must
    outlive this command; a one-line error when there is none."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    except ConnectionError:
        raise HybridError("no Ray cluster to read the memory service from: start one with `ray start --head` "
                          "(the service lives in its detached actors) or set RAY_ADDRESS") from None
