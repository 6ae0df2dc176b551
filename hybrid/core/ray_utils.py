"""Starting or joining Ray the same way everywhere."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from hybrid.core.errors import HybridError
from hybrid.core.redact import redact_url

CONNECT_TIMEOUT_S = float(os.environ.get("HYBRID_RAY_CONNECT_TIMEOUT_S", "10"))


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
    # address="local": a new local Ray even when a stale /tmp/ray/ray_current_cluster names a stopped one
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)


HOW_TO_START = ("start one with `ray start --head --port=6379` and set RAY_ADDRESS=127.0.0.1:6379 (or the "
                "address of the cluster to use)")


def started_cluster_address() -> str | None:
    """The address `ray start` left on this machine, or None. `ray start` (and only it: a driver's temporary local
    Ray does not) writes it to `ray_current_cluster` in Ray's temp dir — $RAY_TMPDIR, else $TMPDIR, else /tmp, then
    `ray/` (ray/_common/utils.py: get_ray_address_file; ray/scripts/scripts.py: start)."""
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        return (Path(root) / "ray" / "ray_current_cluster").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def connect_cluster() -> None:
    """Join a lasting cluster — the one RAY_ADDRESS names, else the one `ray start` started on this machine — for
    services that must outlive this command (detached actors). Never Ray's `auto` lookup, which joins any Ray it
    finds running here, another command's temporary one included: that one ends with its command, and the actors
    with it. A one-line error saying how to start one when there is none."""
    import ray

    if ray.is_initialized():  # the caller started or joined Ray on purpose (a test, the demo)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        address = started_cluster_address()
        if address is None:
            raise HybridError(f"no Ray cluster for the memory service: RAY_ADDRESS is unset and `ray start` has "
                              f"started none on this machine; {HOW_TO_START}")
        try:
            check_reachable(address)
        except HybridError:
            raise HybridError(f"no Ray cluster for the memory service: RAY_ADDRESS is unset and the cluster "
                              f"`ray start` started at {redact_url(address)} does not answer; {HOW_TO_START}") \
                from None
    else:
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError:
        named = (f"RAY_ADDRESS={redact_url(address)}" if os.environ.get("RAY_ADDRESS") else
                 f"the cluster `ray start` started at {redact_url(address)}")
        raise HybridError(f"no Ray cluster to keep the memory service in: {named} cannot be joined; "
                          f"{HOW_TO_START}") from None
