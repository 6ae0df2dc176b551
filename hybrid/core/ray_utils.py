"""Starting or joining Ray the same way everywhere."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from hybrid.core.errors import HybridError
from hybrid.core.redact import redact_url

CONNECT_TIMEOUT_S = float(os.environ.get("HYBRID_RAY_CONNECT_TIMEOUT_S", "10"))
_started_here = False  # init_ray started a local Ray in this process (vs. joined a cluster)

VERBOSE_ENV = "HYBRID_VERBOSE"  # set by `hybrid -v`; Ray's own lines on the terminal too
# Ray's token for a worker's line meant for the user: its log printer shows the text after it, without the token
# (ray/_private/worker.py: print_worker_logs, message_for); quiet, ours shows only such lines
USER_LINE = ":info_message:"
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def verbose() -> bool:
    """Whether Ray's own output (its INFO logs, worker prefixes, Ray Data plans and progress) reaches the terminal:
    `hybrid -v` or HYBRID_VERBOSE=1."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def for_the_user(line: str) -> str:
    """`line` as a Ray worker writes it for the driver's terminal: tagged, so the quiet driver shows it (and only
    such lines); the same text everywhere else."""
    ray = sys.modules.get("ray")
    worker = getattr(getattr(getattr(ray, "_private", None), "worker", None), "global_worker", None)
    in_worker = worker is not None and getattr(worker, "mode", None) == getattr(ray, "WORKER_MODE", object())
    return USER_LINE + line if in_worker else line


def _show_user_lines(data: dict[str, Any]) -> None:
    """Quiet mode's printer of what Ray's workers write (in place of Ray's, which prints every line with its
    `(RayTrainWorker pid=…)` prefix): the lines tagged for the user, bare; the rest stays in the workers' log
    files (<session>/logs/worker-*.out|err). Errors still reach the user: a failed task or run raises in the
    driver (one line, hybrid.cli.run_command), and Ray's own error messages (a worker killed for memory) are
    printed by Ray's error listener, not through here."""
    sink = sys.stderr if data.get("is_err") else sys.stdout
    for line in data.get("lines", ()):
        if USER_LINE in line:
            print(line.split(USER_LINE, 1)[1], file=sink, flush=True)


def _console_handlers(name: str) -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def quiet_ray_logs(before_init: bool = False) -> None:
    """Ray's own output to its log files, not the terminal (unless `verbose()`): its loggers' console handlers
    show warnings and errors only, and — once Ray runs — the driver's INFO lines go to <session>/logs/
    hybrid-driver-<pid>.log (Ray Data's to ray-data.log, as always), workers' lines are filtered
    (`_show_user_lines`), and Ray Data shows no progress bars on the driver (our commands print their own)."""
    if verbose():
        return
    import ray
    import ray.data  # configures its loggers when imported: after that, ours stay

    for name in RAY_LOGGERS:
        for handler in _console_handlers(name):
            handler.setLevel(max(handler.level, logging.WARNING))
    if before_init or not ray.is_initialized():
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")  # its warning "Progress bars disabled…", which we chose (Ray 2.60)
    try:  # Ray 2.60's driver-side dispatcher of worker output (ray/_private/worker.py: connect)
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher  # type: ignore[attr-defined]

        if any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("ray_print_logs", _show_user_lines)
    except (ImportError, AttributeError):
        pass  # another Ray: its lines stay on the terminal
    log_dir = _session_log_dir()
    root = logging.getLogger("ray")
    if log_dir and not any(getattr(h, "hybrid_driver_log", False) for h in root.handlers):
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # a log folder we cannot write is no reason to fail the command
        handler = logging.FileHandler(log_dir / f"hybrid-driver-{os.getpid()}.log", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
        setattr(handler, "hybrid_driver_log", True)  # noqa: B010 (marks our handler; FileHandler has no such field)
        root.addHandler(handler)


def _session_log_dir() -> Path | None:
    """The logs folder of the Ray session this process is connected to (on this machine), or None."""
    import ray

    try:
        node = ray._private.worker._global_node
        return Path(node.get_session_dir_path()) / "logs" if node is not None else None
    except AttributeError:
        return None


def dashboard_url() -> str | None:
    """The Ray dashboard's address (http://…) of the Ray this process is connected to, or None."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        url = ray._private.worker.get_dashboard_url()  # what ray.init's context reports
    except Exception:
        return None
    return (url if "://" in url else f"http://{url}") if url else None


def ray_log_dir() -> Path | None:
    """Where Ray's lines went (quiet, they are not on the terminal): the session's logs folder, or None."""
    import ray

    return _session_log_dir() if ray.is_initialized() else None


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
        raise HybridError(
            f"RAY_ADDRESS={redact_url(address)}: no Ray cluster answers there ({why} within "
            f"{timeout_s:g} s); start one with `ray start --head` or fix RAY_ADDRESS"
        ) from None


def init_ray(num_cpus: int | None = None, include_dashboard: bool = False, **kwargs: Any) -> None:
    """Join the cluster named by RAY_ADDRESS, else start a local Ray (once per process).

    Quiet by default: no usage stats, and Ray's own lines go to its log files, not the terminal
    (`quiet_ray_logs`; `hybrid -v` shows them). Local clusters get token auth turned off unless the user set
    RAY_AUTH_MODE, because a token left in ~/.ray by an earlier `ray start` otherwise changes what a
    fresh local cluster expects (RAY-NOTES).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if verbose():
        kwargs["log_to_driver"] = True  # `hybrid -v`: every worker's lines, even where a command keeps them off
    quiet_ray_logs(before_init=True)  # "Started a local Ray instance…" is Ray's line, not ours
    address = os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if include_dashboard and "dashboard_port" not in kwargs and not os.environ.get("RAY_API_SERVER_ADDRESS"):
            # Train V2's placement-group cleaner asks the State API whether a run's controller lives; with another
            # Ray on the machine it cannot tell which dashboard is its own ("Found multiple active Ray instances"),
            # its thread dies, and every run's worker placement group leaks — seen here: the 7th of 10 sweeps in a
            # row, beside another developer's Ray, waited forever for CPUs its finished trials still held. The
            # cluster's processes inherit this environment, so naming our dashboard here tells them.
            port = _free_port()
            kwargs["dashboard_port"] = port
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # address="local": a new local Ray even when a stale /tmp/ray/ray_current_cluster names a stopped one
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)
        global _started_here
        _started_here = True
    quiet_ray_logs()


def task_slots(asked: int, local: bool) -> int:
    """How many tasks run at once: `asked`, or with 0 one per CPU — of this machine with `local` (no Ray), else of
    the Ray cluster (joined or started here). A cluster that autoscales counts the CPUs it has now: set a number."""
    if asked:
        return asked
    if local:
        return max(1, os.cpu_count() or 1)
    import ray

    init_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fixed_resources() -> dict[str, float] | None:
    """The cluster's resources when they are known and fixed — a local Ray this process started — else None: a
    joined cluster may autoscale, so a request larger than what it holds now may still be met (Ray Train waits)."""
    import ray

    return dict(ray.cluster_resources()) if _started_here and ray.is_initialized() else None


HOW_TO_START = (
    "start one with `ray start --head --port=6379` and set RAY_ADDRESS=127.0.0.1:6379 (or the "
    "address of the cluster to use)"
)


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
            raise HybridError(
                f"no Ray cluster for the memory service: RAY_ADDRESS is unset and `ray start` has "
                f"started none on this machine; {HOW_TO_START}"
            )
        try:
            check_reachable(address)
        except HybridError:
            raise HybridError(
                f"no Ray cluster for the memory service: RAY_ADDRESS is unset and the cluster "
                f"`ray start` started at {redact_url(address)} does not answer; {HOW_TO_START}"
            ) from None
    else:
        check_reachable(address)
    try:
        quiet_ray_logs(before_init=True)
        ray.init(address=address, log_to_driver=verbose())
        quiet_ray_logs()
    except ConnectionError:
        named = (
            f"RAY_ADDRESS={redact_url(address)}"
            if os.environ.get("RAY_ADDRESS")
            else f"the cluster `ray start` started at {redact_url(address)}"
        )
        raise HybridError(
            f"no Ray cluster to keep the memory service in: {named} cannot be joined; {HOW_TO_START}"
        ) from None
