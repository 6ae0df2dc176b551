"""`root_cause`: the error a user should see at the bottom of the chains Ray wraps a worker's error in (Ray's own
exception types, built here as Ray builds them)."""

from ray.exceptions import RayTaskError
from ray.train import WorkerGroupError

from hybrid.core.errors import HybridError, root_cause


def test_a_worker_groups_first_failure_under_a_task_error_is_the_root_cause():
    bad = HybridError("data.train: no such file")
    first = RayTaskError("train_fn", "Traceback ...", bad)
    group = WorkerGroupError("Training failed", {0: first, 1: RuntimeError("second worker")})
    try:
        try:
            raise group
        except WorkerGroupError as e:
            raise RuntimeError("Tune trial failed") from e
    except RuntimeError as outer:
        assert root_cause(outer) is bad


def test_an_error_without_a_cause_is_its_own_root_cause_and_a_cycle_ends():
    plain = ValueError("x")
    assert root_cause(plain) is plain
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert root_cause(a) in (a, b)
