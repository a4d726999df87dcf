from __future__ import annotations

import math

import numpy as np
import pytest

from agents.surrogate import GPSurrogate, PlanEncoder, Surrogate
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem
from tests.agents.conftest import all_plans, make_target_env


def _told(problem: SearchProblem, acquisition: str = "ei", n: int = 8) -> GPSurrogate:
    surrogate = GPSurrogate(problem, acquisition=acquisition, pool_size=30, seed=0)
    rng = np.random.default_rng(0)
    plans = list({p.key(): p for p in (problem.random_plan(rng) for _ in range(n))}.values())
    surrogate.tell(plans, [s.reward for s in problem.evaluate(plans)])
    return surrogate


def test_gp_surrogate_follows_the_protocol_and_ask_is_idempotent_until_tell(target_problem):
    surrogate = _told(target_problem)
    assert isinstance(surrogate, Surrogate)
    first = surrogate.ask(3)
    assert len(first) == 3 and surrogate.ask(3) == first
    before = surrogate.n_observations
    scores = [s.reward for s in target_problem.evaluate(first)]
    surrogate.tell(first, scores)
    assert surrogate.n_observations == before + 3
    assert not {p.key() for p in surrogate.ask(3)} & {p.key() for p in first}  # seen plans not re-asked


@pytest.mark.parametrize("acquisition", ["ei", "pi", "lcb"])
def test_acquisitions_rank_a_pool(target_problem, acquisition):
    surrogate = _told(target_problem, acquisition)
    pool = all_plans(target_problem)[:40]
    values = surrogate.acquire(pool)
    assert values.shape == (40,) and np.isfinite(values).all()
    mean, std = surrogate.predict(pool)
    assert mean.shape == std.shape == (40,) and (std >= 0).all()
    assert surrogate.n_predictions >= 80


def test_gp_surrogate_fits_the_known_landscape(target_problem):
    surrogate = _told(target_problem, n=40)
    plans = all_plans(target_problem)
    mean, _ = surrogate.predict(plans)
    truth = np.array([s.reward for s in target_problem.scorer.score(plans)])
    assert np.corrcoef(mean, truth)[0, 1] > 0.5


def test_tell_rejects_plans_outside_the_space_or_for_another_model(target_problem, tiny_problem):
    surrogate = GPSurrogate(target_problem)
    with pytest.raises(InvalidPlan, match="another model"):
        surrogate.tell([tiny_problem.random_plan(np.random.default_rng(0))], [0.5])
    plan = target_problem.random_plan(np.random.default_rng(0))
    bad_rate = PruningPlan((LayerAction(Scheme.UNSTRUCTURED, 3.0),) + plan.actions[1:],
                           plan.layer_names, plan.arch_fingerprint)
    with pytest.raises(InvalidPlan, match="outside the search space at layer 'conv1'"):
        surrogate.tell([bad_rate], [0.5])
    pattern_fc = PruningPlan(plan.actions[:2] + (LayerAction(Scheme.PATTERN, 2.0),),
                             plan.layer_names, plan.arch_fingerprint)
    with pytest.raises(InvalidPlan, match="layer 'fc'"):
        surrogate.tell([pattern_fc], [0.5])
    with pytest.raises(InvalidConfig, match="2 plans and 1 scores"):
        surrogate.tell([plan, plan], [0.5])
    with pytest.raises(InvalidConfig, match="finite"):
        surrogate.tell([plan], [math.nan])
    assert surrogate.n_observations == 0


def test_plan_encoding_is_fixed_length_and_distinguishes_plans(target_problem):
    encoder = PlanEncoder(target_problem)
    x = encoder.encode(all_plans(target_problem))
    assert x.shape == (245, encoder.dim) and np.isfinite(x).all()
    assert len({row.tobytes() for row in x}) == 245


def test_unknown_acquisition_is_rejected():
    with pytest.raises(InvalidConfig, match="acquisition"):
        GPSurrogate(SearchProblem.from_env(make_target_env()), acquisition="ucbx")  # type: ignore[arg-type]
