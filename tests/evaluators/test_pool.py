"""EvaluationPool / PooledAccuracy / PooledLatency, and FaultyEvaluator end to end."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
import torch

from baselines.registry import make_baseline
from evaluators.accuracy.proxy import ProxyAccuracy
from evaluators.faulty import FAULT_KINDS, FaultyEvaluator, InjectedFault
from evaluators.latency.analytic import AnalyticLatency
from evaluators.pool import EvaluationPool, PooledAccuracy, PooledLatency, in_pool_worker
from evaluators.registry import make_accuracy, make_latency
from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig
from npas_env.plan import PruningPlan
from npas_env.problem import SearchProblem
from npas_env.report import failure_lines
from tests.conftest import TinyNet

TIMEOUT_S = 0.5

#: The reason each fault kind must leave in ``trial.error`` (role filled in for "nan").
REASONS = {"raise": "InjectedFault: injected fault 'raise'", "hang": f"timeout after {TIMEOUT_S:g} s",
           "nan": "invalid {role} value nan", "garbage": "evaluator returned str, not",
           "wrong_count": "evaluator returned 2 results for 1 plan", "crash": "worker crashed"}


@pytest.fixture(scope="module")
def env() -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16))


def random_plans(env: NPASEnv, n: int, seed: int = 0) -> list[PruningPlan]:
    problem = SearchProblem.from_env(env)
    rng = np.random.default_rng(seed)
    return [problem.random_plan(rng) for _ in range(n)]


def plans_with(faulty: FaultyEvaluator, env: NPASEnv, role: str, want: list[str | None]) -> list[PruningPlan]:
    """Random plans whose scheduled fault kinds are ``want``, in that order."""
    pool = random_plans(env, 400, seed=1)
    out = []
    for kind in want:
        plan = next(p for p in pool if faulty.fault_for(role, [p]) == kind and p not in out)
        out.append(plan)
    return out


def test_faulty_is_registered_and_validates():
    assert isinstance(make_accuracy("faulty"), FaultyEvaluator)
    assert isinstance(make_latency("faulty", p_nan=0.5), FaultyEvaluator)
    with pytest.raises(InvalidConfig, match="p_raise"):
        FaultyEvaluator(p_raise=1.5)
    with pytest.raises(InvalidConfig, match="sum"):
        FaultyEvaluator(p_raise=0.6, p_nan=0.6)


def test_faulty_crash_raises_in_main_process(env):
    assert not in_pool_worker()
    faulty = FaultyEvaluator(p_crash=1.0)
    with pytest.raises(InjectedFault, match="refused outside a pool worker"):
        faulty.evaluate(env.context, random_plans(env, 1))


@pytest.mark.timeout(60)
def test_pooled_matches_unpooled_on_a_batch(env):
    plans = random_plans(env, 6)
    with PooledAccuracy("proxy", workers=2, timeout_s=30, mp_context="spawn") as pooled:
        assert pooled.evaluate(env.context, plans) == ProxyAccuracy().evaluate(env.context, plans)
        assert pooled.name == "proxy" and pooled.config() == ProxyAccuracy().config()
    with PooledLatency(AnalyticLatency(), workers=2, timeout_s=30, mp_context="fork") as pooled:
        assert pooled.measure(env.context, plans) == AnalyticLatency().measure(env.context, plans)
        assert pooled.measure(env.context, []) == []


@pytest.mark.timeout(60)
def test_timeout_fails_only_the_hung_plan_and_pool_keeps_working(env):
    faulty = FaultyEvaluator(seed=3, p_hang=0.5, hang_s=60)
    plans = plans_with(faulty, env, "accuracy", [None, "hang", None, None, "hang", None])
    expected = ProxyAccuracy().evaluate(env.context, plans)
    with EvaluationPool(faulty, "accuracy", workers=2, timeout_s=TIMEOUT_S, mp_context="fork") as pool:
        start = time.monotonic()
        results = pool.run(env.context, plans)
        assert time.monotonic() - start < 15
        for i in (1, 4):
            assert results[i].error == f"timeout after {TIMEOUT_S:g} s"
        assert [results[i] for i in (0, 2, 3, 5)] == [expected[i] for i in (0, 2, 3, 5)]
        assert pool.restarts >= 1
        again = [plans[0], plans[2]]
        assert pool.run(env.context, again) == ProxyAccuracy().evaluate(env.context, again)


@pytest.mark.timeout(60)
def test_crashed_worker_fails_only_its_plan_and_next_batch_works(env):
    faulty = FaultyEvaluator(seed=5, p_crash=0.5)
    plans = plans_with(faulty, env, "latency", [None, "crash", None, "crash", None])
    expected = AnalyticLatency().measure(env.context, plans)
    with PooledLatency(faulty, workers=2, timeout_s=10, mp_context="fork") as pooled:
        results = pooled.measure(env.context, plans)
        assert [r.ok for r in results] == [True, False, True, False, True]
        assert all(results[i].error.startswith("worker crashed") for i in (1, 3))
        assert [results[i] for i in (0, 2, 4)] == [expected[i] for i in (0, 2, 4)]
        assert pooled.measure(env.context, plans[::2]) == expected[::2]


def expected_error(faulty: FaultyEvaluator, plan: PruningPlan) -> tuple[list[str], list[str]]:
    """The fault kinds a plan gets (accuracy, latency) and the reason strings they must leave."""
    kinds, reasons = [], []
    for role in ("accuracy", "latency"):
        kind = faulty.fault_for(role, [plan])
        if kind is not None:
            kinds.append(kind)
            reasons.append(f"{role}: " + REASONS[kind].format(role=role))
    return kinds, reasons


@pytest.mark.timeout(120)
def test_faulty_search_of_100_evaluations_completes_with_defined_failures(env):
    probs = {f"p_{kind}": 0.04 for kind in FAULT_KINDS}
    dense = PruningPlan.dense(env.context.layer_names, env.context.arch_fingerprint)
    seed = next(s for s in range(100) if FaultyEvaluator(seed=s, **probs).fault_for("latency", [dense]) is None)
    faulty = FaultyEvaluator(seed=seed, hang_s=60, **probs)
    accuracy = PooledAccuracy(faulty, workers=2, timeout_s=TIMEOUT_S, mp_context="fork")
    latency = PooledLatency(faulty, workers=2, timeout_s=TIMEOUT_S, mp_context="fork")
    faulty_env = NPASEnv(env.context.model, env.context.example_input, accuracy=accuracy,
                         latency=latency)
    problem = SearchProblem.from_env(faulty_env, budget=100)
    try:
        make_baseline("random", seed=0, batch_size=4).run(problem, 100)
    finally:
        accuracy.close()
        latency.close()
    assert problem.n_evals == 100
    counts: collections.Counter[str] = collections.Counter()
    for trial in problem.trials:
        kinds, reasons = expected_error(faulty, trial.plan)
        counts.update(kinds or ["none"])
        if not reasons:
            assert trial.error is None and trial.reward != faulty_env.scorer.failure_reward
            continue
        assert trial.error is not None and trial.reward == faulty_env.scorer.failure_reward
        for reason in reasons:
            assert reason in trial.error, (reason, trial.error)
    print("fault counts over 100 evaluations:", dict(counts))
    assert set(FAULT_KINDS) <= set(counts), counts
    report = "\n".join(failure_lines(problem.trials, top=100))
    failed = sum(t.error is not None for t in problem.trials)
    assert f"{failed} of 100 true evaluations failed" in report
    assert all(REASONS[k].format(role="accuracy").split(" ")[0] in report for k in FAULT_KINDS)
