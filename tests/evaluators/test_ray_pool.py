"""RayEvaluationPool: same results and the same defined failures as the local pool.

One Ray instance (2 CPUs) and one pool of 2 actors serve the whole module, so start-up is paid once.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

from evaluators.faulty import FaultyEvaluator
from evaluators.latency.analytic import AnalyticLatency
from evaluators.pool import CRASHED, EvaluationPool, PooledAccuracy, make_pool
from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig, MissingDependency
from tests.conftest import TinyNet
from tests.evaluators.test_pool import REASONS, random_plans

ray = pytest.importorskip("ray")
ray_pool = pytest.importorskip("evaluators.ray_pool")

TIMEOUT_S = 1.0
FAULTS = {"p_raise": 0.12, "p_hang": 0.12, "p_nan": 0.12, "p_garbage": 0.12, "p_wrong_count": 0.12,
          "p_crash": 0.12}


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def env() -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16))


@pytest.fixture(scope="module")
def faulty() -> FaultyEvaluator:
    return FaultyEvaluator(seed=7, hang_s=60, **FAULTS)


@pytest.fixture(scope="module")
def pick(faulty, env):
    """``pick([None, "hang", ...])``: distinct plans whose scheduled latency faults are these."""
    candidates = random_plans(env, 150, seed=1)

    def plans(want: list[str | None]) -> list:
        out: list = []
        for kind in want:
            out.append(next(p for p in candidates if faulty.fault_for("latency", [p]) == kind
                            and p not in out))
        return out

    return plans


@pytest.fixture(scope="module")
def pool(ray_session, faulty):
    with ray_pool.RayEvaluationPool(faulty, "latency", workers=2, timeout_s=TIMEOUT_S) as pool:
        yield pool


def test_ray_backend_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=r"pip install 'npas-env\[ray\]'"):
        make_pool(AnalyticLatency(), "latency", backend="ray")
    with pytest.raises(MissingDependency, match="npas-env"):
        PooledAccuracy("proxy", ray_address="auto")


def test_bad_backend_settings_raise():
    with pytest.raises(InvalidConfig, match="backend"):
        make_pool(AnalyticLatency(), "latency", backend="dask")
    with pytest.raises(InvalidConfig, match="workers"):
        make_pool(AnalyticLatency(), "latency", backend="ray", workers=0)


@pytest.mark.timeout(60)
def test_results_and_failures_equal_the_local_pool(pool, faulty, env, pick):
    want = [None, "raise", "nan", None, "garbage", "wrong_count", None]
    plans = pick(want)
    with EvaluationPool(faulty, "latency", workers=2, timeout_s=30, mp_context="fork") as local:
        expected = local.run(env.context, plans)
    results = pool.run(env.context, plans)
    assert results == expected
    assert [r.ok for r in results] == [kind is None for kind in want]
    assert results[1].error.startswith(REASONS["raise"])
    assert results[0] == AnalyticLatency().measure(env.context, plans[:1])[0]
    assert pool.run(env.context, []) == []


@pytest.mark.timeout(60)
def test_timeout_fails_only_the_hung_plan(pool, env, pick):
    plans = pick([None, "hang", None, None])
    restarts, start = pool.restarts, time.monotonic()
    results = pool.run(env.context, plans)
    assert time.monotonic() - start < 30
    assert results[1].error == f"timeout after {TIMEOUT_S:g} s"
    assert all(results[i].ok for i in (0, 2, 3))
    assert pool.restarts == restarts + 1
    assert pool.run(env.context, plans[2:]) == results[2:]  # the live actor takes them


@pytest.mark.timeout(60)
def test_crashed_worker_fails_only_its_plan_and_is_replaced(pool, env, pick):
    plans = pick([None, None, None, "crash"])
    restarts = pool.restarts
    results = pool.run(env.context, plans)
    assert results[3].error == CRASHED
    assert all(results[i].ok for i in (0, 1, 2))
    assert pool.restarts == restarts + 1
    assert pool.run(env.context, plans[:1]) == results[:1]


def test_cluster_too_small_is_a_config_error(ray_session, env, pick):
    with pytest.raises(InvalidConfig, match="too few"), \
            ray_pool.RayEvaluationPool(AnalyticLatency(), "latency", workers=3) as big:
        big.run(env.context, pick([None]))
