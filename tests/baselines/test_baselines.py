from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.base import SearchAgent
from baselines.base import is_allowed
from baselines.registry import baseline_names, make_baseline
from baselines.rule_based import RuleBasedSettings, default_latency_model, select_block_size
from npas_env.env import NPASEnv
from npas_env.errors import EvaluatorNotFound, InvalidConfig
from npas_env.layers import LayerKind
from npas_env.plan import Scheme
from npas_env.problem import SearchProblem
from tests.conftest import TinyNet

FAST = {"bo": {"n_initial_points": 3, "n_points": 200}, "amc": {"warmup_episodes": 2}}


def make_problem(budget: int | None = None) -> SearchProblem:
    torch.manual_seed(0)
    env = NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), accuracy="proxy", latency="analytic")
    return SearchProblem.from_env(env, budget)


def assert_plans_respect_masks(problem: SearchProblem) -> None:
    for trial in problem.trials:
        decided = []
        for spec, action in zip(problem.layers, trial.plan.actions, strict=True):
            assert is_allowed(problem.space, spec, decided, action), (spec.name, action)
            decided.append((spec, action))


@pytest.mark.parametrize("name", baseline_names())
def test_baseline_smoke_respects_budget_and_masks(name):
    problem = make_problem()  # unlimited: the baseline itself must stop at its budget
    method = make_baseline(name, seed=1, **FAST.get(name, {}))
    assert isinstance(method, SearchAgent)
    best = method.run(problem, 4)
    assert 1 <= problem.n_evals <= 4
    assert best is not None and best.reward == max(t.reward for t in problem.trials)
    assert_plans_respect_masks(problem)


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_baseline_stops_on_tiny_spaces(name):
    from npas_env.search_space import SearchSpace

    torch.manual_seed(0)
    space = SearchSpace(filter_types=("keep",), schemes=("filter",), rates=(1.0, 2.0), block_sizes=((0, 0),))
    env = NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), search_space=space)
    problem = SearchProblem.from_env(env)
    make_baseline(name, seed=0, max_proposals=300).run(problem, 1000)
    assert problem.n_evals < 1000  # the space is exhausted long before


@pytest.mark.parametrize("hard", [True, False])
def test_rule_based_maps_schemes_by_layer_type(hard):
    problem = make_problem(10)
    best = make_baseline("rule_based", hard_dataset=hard).run(problem, 10)
    assert 1 <= problem.n_evals <= 3
    for spec, action in zip(problem.layers, best.plan.actions, strict=True):
        if spec.kind is LayerKind.DEPTHWISE:
            assert action.is_dense
        elif spec.kernel_size == (3, 3):
            assert action.scheme is (Scheme.PATTERN if hard else Scheme.BLOCK_PUNCHED)
        elif spec.kind is LayerKind.LINEAR or spec.kernel_size == (1, 1):
            assert action.scheme is Scheme.BLOCK_BASED
        else:
            assert action.scheme is Scheme.BLOCK_PUNCHED
    assert_plans_respect_masks(problem)


def test_rule_based_block_size_is_smallest_within_beta():
    problem = make_problem()
    spec = next(s for s in problem.layers if s.name == "pw")
    latency = default_latency_model()
    candidates = problem.space.allowed_block_sizes(spec)
    strict = select_block_size(spec, Scheme.BLOCK_BASED, 5.0, candidates, latency, beta=0.0)
    loose = select_block_size(spec, Scheme.BLOCK_BASED, 5.0, candidates, latency, beta=10.0)
    assert loose == min(candidates, key=lambda b: (b[0] or 32) * (b[1] or 16))
    assert (strict[0] or 32) * (strict[1] or 16) >= (loose[0] or 32) * (loose[1] or 16)


def test_rule_based_rates_hook_is_used():
    problem = make_problem(5)
    seen = {}

    def rates_fn(prob, actions):
        seen["n"] = len(actions)
        return [7.0] * len(actions)

    make_baseline("rule_based", rates_fn=rates_fn, max_evals=1).run(problem, 5)
    assert seen["n"] == len(problem.layers) and problem.n_evals == 1
    rates = {a.rate for a in problem.trials[0].plan.actions if not a.is_dense}
    assert rates == {7.0}
    assert RuleBasedSettings().beta == 0.2


def test_registry_did_you_mean_and_bad_settings():
    with pytest.raises(EvaluatorNotFound, match="did you mean 'uniform'"):
        make_baseline("unifrom")
    with pytest.raises(InvalidConfig, match="no settings"):
        make_baseline("random", nonsense=1)
    with pytest.raises(InvalidConfig, match="budget"):
        make_baseline("random").run(make_problem(), 0)


def test_seeded_baselines_are_deterministic():
    a, b = make_problem(), make_problem()
    make_baseline("evolution", seed=3).run(a, 6)
    make_baseline("evolution", seed=3).run(b, 6)
    assert [t.plan.key() for t in a.trials] == [t.plan.key() for t in b.trials]
    assert np.allclose([t.reward for t in a.trials], [t.reward for t in b.trials])
