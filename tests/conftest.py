"""Shared fixtures. Ray starts once per test session (it takes 5–11 s here) with a small cluster."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.commands import set_test_timeout

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
# A Ray head of the tests' own (`ray start --block`) drains for 30 s on SIGTERM (Ray 2.60, for Kubernetes pods): the
# drain RPC waits for the GCS, which got the same SIGTERM, so stopping a head took 33.5 s here; 3.6 s without it
os.environ.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
# Ray Train V2's controller polls its workers every 2 s (so a finished run is noticed up to 2 s late) and starts a
# PreemptionWatcher actor (one more Python process) per worker group: the suite runs about 40 Train runs and trials
# on 2 cores; the two settings together made a 2-worker run 3 s (10 %) faster here (4 A/B pairs, 27.3 vs 30.2 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# One torch/OpenMP thread per process: the tests' models are tiny, and on 2 shared cores (Ray's processes, a
# subprocess per `hybrid train`) a second thread per process made small forwards many times slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("RAY_ADDRESS", None)  # tests never join a cluster that happens to run on the machine
for _secret in ("OPENAI_API_KEY", "LLM_BASE_URL", "LLM_MODEL_NAME"):
    os.environ.pop(_secret, None)  # tests set what they need; a developer's .env must not leak in


RAY_FIXTURES = {"ray_head", "ray_session", "two_nodes"}
RAY_TESTS_KEY = "hybrid_ray_tests"  # the file in which pytest-xdist workers list the Ray tests for the scheduler


def uses_ray(item: pytest.Item) -> bool:
    """A test that starts or joins a Ray: through a Ray fixture, or marked `ray` (a Ray of its own)."""
    return bool(RAY_FIXTURES & set(getattr(item, "fixturenames", ()))) or item.get_closest_marker("ray") is not None


# `make test` runs two pytest-xdist workers (`-n 2`). Every test that uses Ray runs in one of them, in file order, the
# rest in the other: the session's Ray fixtures start once, and no two Rays of the suite run side by side (the Ray
# tests keep 2 cores ~75 % busy: two Ray groups at once made the suite slower here, not faster). xdist's own
# `--dist loadgroup` cannot say so with pytest 9 (it renames test ids through an attribute pytest 9 no longer reads),
# so the workers list the Ray tests in a file and the scheduler below makes them one work unit (the largest, so the
# first handed out). Without xdist these hooks are never called.
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput[RAY_TESTS_KEY] = str(_ray_tests_file(node.config))


def _ray_tests_file(config) -> Path:
    if not hasattr(config, "_hybrid_ray_tests"):
        import tempfile

        config._hybrid_ray_tests = Path(tempfile.mkdtemp(prefix="hybrid-xdist-")) / "ray-tests.txt"
    return config._hybrid_ray_tests


def pytest_unconfigure(config):
    made = getattr(config, "_hybrid_ray_tests", None)  # the controller's (workers only write into it)
    if made is not None:
        import shutil

        shutil.rmtree(made.parent, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    path = getattr(config, "workerinput", {}).get(RAY_TESTS_KEY)
    if path:  # a worker: list the Ray tests (every worker writes the same list)
        tmp = Path(f"{path}.{os.getpid()}")
        tmp.write_text("".join(item.nodeid + "\n" for item in items if uses_ray(item)))
        os.replace(tmp, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        """xdist's scope scheduling, a scope being one test, except that the Ray tests are one scope."""

        ray_tests: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.ray_tests is None:  # every worker has collected (and written the list) before scheduling starts
                self.ray_tests = set(_ray_tests_file(config).read_text().splitlines())
            return "ray" if nodeid in self.ray_tests else nodeid

    return RayTestsTogether(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout starts a test's timer: `run_process` ends its commands before it runs out."""
    set_test_timeout(settings.timeout)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    set_test_timeout(None)


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A local Ray with 2 CPUs for the whole test session (started on first use). Started after the tests' S3 server,
    so its workers hold the server's credentials (as a cloud cluster's nodes hold theirs): a Train worker can write
    to s3:// outputs."""
    import ray

    from hybrid.core.ray_utils import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class RayHead:
    """A Ray head of the tests' own: `address` (for RAY_ADDRESS), `dashboard` (http://127.0.0.1:PORT), `env` (the
    environment a command joining it runs with)."""

    def __init__(self, address: str, dashboard: str, temp_dir: str, metrics_port: int = 0):
        self.address, self.dashboard, self.temp_dir, self.metrics_port = address, dashboard, temp_dir, metrics_port
        self.env = {
            **os.environ,
            "RAY_ADDRESS": address,
            "RAY_AUTH_MODE": "disabled",
            "RAY_API_SERVER_ADDRESS": dashboard,
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        }

    def get(self, path: str):
        """GET a dashboard REST path (the State and Jobs APIs) as JSON."""
        import json
        import urllib.request

        with urllib.request.urlopen(self.dashboard + path, timeout=30) as r:
            return json.loads(r.read())

    def placement_group_states(self) -> list[str]:
        data = self.get("/api/v0/placement_groups?limit=10000")
        return [pg["state"] for pg in data["data"]["result"]["result"]]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process started with `start_new_session=True` and everything it started (a test's Ray head): SIGTERM
    to its group, SIGKILL if it has not ended in 30 s. Never `ray stop`, which would stop every Ray on the machine."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def start_ray_node(
    temp_dir: Path,
    env: dict[str, str],
    *,
    num_cpus: int,
    worker_ports: tuple[int, int],
    dashboard: bool = False,
    address: str | None = None,
    log_name: str = "head.log",
) -> tuple[subprocess.Popen, dict[str, int]]:
    """`ray start --head --block` (or, with `address`, a node joining that head) with every port set to a free one
    (two Rays on one machine collide on the defaults, the dashboard agent's 52365 among them), workers on
    `worker_ports` (low, count), the head's private `--temp-dir` (a joining node uses its head's), the output in
    `<temp_dir>/<log_name>`, in a session of its own (stop it with `stop_process_group`, never `ray stop`).
    Returns the process and its ports by name ("gcs", "dashboard", "metrics", …)."""
    import sys

    low, count = worker_ports
    names = ("gcs", "dashboard", "agent_http", "agent_grpc", "metrics", "node_manager", "object_manager")
    names += ("runtime_env", "client")
    values = free_ports(len(names))
    while any(low <= p < low + count for p in values):  # Ray refuses a port in the workers' range
        values = free_ports(len(names))
    ports = dict(zip(names, values))
    if address is None:
        role = ["--head", f"--port={ports['gcs']}", f"--ray-client-server-port={ports['client']}"]
        role += [f"--dashboard-port={ports['dashboard']}", f"--temp-dir={temp_dir}"]
        role += (
            ["--include-dashboard=true", "--dashboard-host=127.0.0.1"] if dashboard else ["--include-dashboard=false"]
        )
    else:
        role = [f"--address={address}"]
    if dashboard:  # Train V2's placement-group cleaner finds its controller through the State API; with two Rays
        env = {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}"}  # on the machine: this one
    log = open(temp_dir / log_name, "w")  # noqa: SIM115 (the child writes it; closed here once it has it)
    with log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--block",
                *role,
                f"--num-cpus={num_cpus}",
                f"--dashboard-agent-listen-port={ports['agent_http']}",
                f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
                f"--metrics-export-port={ports['metrics']}",
                f"--node-manager-port={ports['node_manager']}",
                f"--object-manager-port={ports['object_manager']}",
                f"--runtime-env-agent-port={ports['runtime_env']}",
                f"--min-worker-port={low}",
                f"--max-worker-port={low + count - 1}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, ports


def other_worker_ports(slot: int) -> tuple[int, int]:
    """50 worker ports for another Ray node of this test process (slot 0 or 1), above the machine's ephemeral range
    (32768-60999) and apart from the session head's (`ray_head`)."""
    return 61000 + (os.getpid() % 40) * 100 + 50 * slot, 50


@pytest.fixture(scope="session")
def ray_head(s3_server):
    """A real Ray head started with `ray start --head --block`: every port set to a free one, the dashboard on
    127.0.0.1, a private temp dir, token auth off (RAY_AUTH_MODE set, so a token left in ~/.ray changes nothing). It is
    stopped through its process group at the end — never `ray stop`, which stops every Ray on the machine. Its nodes
    hold the credentials of the tests' S3 server (as a cloud cluster's nodes hold theirs), so jobs and trials can
    use s3:// outputs."""
    import shutil
    import sys
    import tempfile
    import time
    import urllib.request
    from pathlib import Path

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: socket paths have a length limit
    env = {
        **os.environ,
        **s3_server.env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # jobs run `python` / `hybrid` from the PATH the head was started with: this venv's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    worker_ports = (30000 + (os.getpid() % 300) * 100, 100)
    proc, ports = start_ray_node(Path(temp_dir), env, num_cpus=2, dashboard=True, worker_ports=worker_ports)
    head = RayHead(f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}", temp_dir, ports["metrics"])
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=5)
            head.get("/api/jobs/")  # the job agent is up too
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"the test's Ray head did not start: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}"
                ) from None
            time.sleep(1)
    yield head
    stop_process_group(proc)
    shutil.rmtree(temp_dir, ignore_errors=True)


class S3Server:
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP server speaking the S3 protocol; pyarrow and boto3
    talk to it as to AWS): `env` points a process at it, `bucket()` makes a fresh bucket."""

    def __init__(self, tmp: Path):
        import subprocess
        import sys
        import time
        import urllib.request

        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.log = open(tmp / "moto.log", "w")  # noqa: SIM115 (the server's output while it runs; closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    log = (tmp / "moto.log").read_text()[-2000:]
                    raise RuntimeError(f"moto server did not start: {log}") from None
                time.sleep(0.3)
        self._n = 0

    def bucket(self) -> str:
        import boto3

        self._n += 1
        name = f"bucket-{self._n}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 server for the session, its credentials in this process's environment while it runs."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
