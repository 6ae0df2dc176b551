"""Starting or joining Ray the same way everywhere."""

from __future__ import annotations

import os
import re
import socket

from hybrid.core.errors import HybridError
from hybrid.core.redact import redact_url

CONNECT_TIMEOUT_S = float(os.environ.get("HYBRID_RAY_CONNECT_TIMEOUT_S", "10"))
_started_here = False  # init_ray started a local Ray in this process (vs. joined a cluster)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A `host:port` (or `ray://host:port`) address must accept a TCP connection within `timeout_s`: `ray.init`
    itself waits a long time for a cluster that is not there. A one-line error naming the address otherwise."""
    m = re.match(r"^(?:[a-z]+://)?(?:[^@/]*@)?(\[[^\]]+\]|[^:/]+):(\d+)/?$", address.strip(), re.I)
    if not m:
        return  # "auto", "local", or a form Ray resolves itself
    host, port = m.group(1).strip("[]"), int(m.group(2))
    # what answers may still not be Ray: bound Ray's own wait for its GCS (about one try a second) — generously, as
    # a real cluster on a busy machine can take tens of seconds to answer (10 s failed runs at load average 7)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(max(60, int(timeout_s))))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise HybridError(f"RAY_ADDRESS={redact_url(address)}: no Ray cluster answers there ({why} within "
                          f"{timeout_s:g} s); start one with `ray start --head` or fix RAY_ADDRESS") from None


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
        check_reachable(address)
        ray.init(address=address, **kwargs)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if include_dashboard and "dashboard_port" not in kwargs and not os.environ.get("RAY_API_SERVER_ADDRESS"):
        # Train V2's placement-group cleaner asks the State API whether a run's controller lives; with another Ray on
        # the machine it cannot tell which dashboard is its own ("Found multiple active Ray instances"), its thread
        # dies, and every run's worker placement group leaks — seen here: the 7th of 10 sweeps in a row, beside
        # another developer's Ray, waited forever for CPUs its finished trials still held. The cluster's processes
        # inherit this environment, so naming our dashboard here tells them.
        port = _free_port()
        kwargs["dashboard_port"] = port
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # address="local": a new local Ray even when a stale /tmp/ray/ray_current_cluster names a stopped one
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)
    global _started_here
    _started_here = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_resources() -> dict[str, float] | None:
    """The cluster's resources when they are known and fixed — a local Ray this process started — else None: a
    joined cluster may autoscale, so a request larger than what it holds now may still be met (Ray Train waits)."""
    import ray

    return dict(ray.cluster_resources()) if _started_here and ray.is_initialized() else None


def connect_cluster() -> None:
    """Join a running cluster (RAY_ADDRESS, else the one started on this machine) — for services that must
    outlive this command; a one-line error when there is none."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or "auto"
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError:
        where = f"at RAY_ADDRESS={redact_url(address)}" if address != "auto" else "on this machine"
        raise HybridError(f"no Ray cluster {where} to read the memory service from: start one with `ray start "
                          f"--head` (the service lives in its detached actors) or set RAY_ADDRESS") from None
