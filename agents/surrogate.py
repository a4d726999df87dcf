"""Surrogates of the plan -> reward map (NPAS phase 2: Bayesian optimization inside the RL loop).

NPAS states that BO cuts the number of schemes actually evaluated but not how; following NAS-BOWL
(``docs/agents.md``) a GP is fitted to the true rewards seen so far and ranks a pool of candidate
plans by an acquisition function; only the best few are evaluated for real.

Plan encoding (:class:`PlanEncoder`), per layer: one-hot filter type, one-hot scheme (all zero
when dense), ``log(rate) / log(max rate)``, and for block schemes ``log2(p) / log2(rows)``,
``log2(q) / log2(cols)`` of the effective block (0 = whole dimension counts as the dimension);
then two whole-plan features, the kept share of MACs and of weights (scaled by sqrt(layers)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, cast, runtime_checkable

import numpy as np
from skopt.acquisition import gaussian_ei, gaussian_lcb, gaussian_pi
from skopt.learning import GaussianProcessRegressor
from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern
from threadpoolctl import threadpool_limits

from agents.base import allowed_actions
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.layers import LayerSpec
from npas_env.plan import FilterType, LayerAction, PruningPlan
from npas_env.problem import SearchProblem

Acquisition = Literal["ei", "pi", "lcb"]


@runtime_checkable
class Surrogate(Protocol):
    """Ask/tell surrogate: ``ask`` is idempotent until ``tell``; ``tell`` validates its plans."""

    def ask(self, n: int = 1) -> list[PruningPlan]: ...

    def tell(self, plans: Sequence[PruningPlan], scores: Sequence[float]) -> None: ...


class PlanEncoder:
    """Validates plans of one model and turns them into fixed-length float vectors.

    Args:
        problem: the problem whose model and search space plans belong to.
        summary_weight: weight of the two whole-plan features appended after the per-layer
            blocks (kept share of MACs and of weights, from filter types and rates).
    """

    def __init__(self, problem: SearchProblem, summary_weight: float = 1.0) -> None:
        self.problem = problem
        self.layers: tuple[LayerSpec, ...] = problem.layers
        self.space = problem.space
        ctx = problem.scorer.context
        self.layer_names, self.fingerprint = ctx.layer_names, ctx.arch_fingerprint
        self._max_log_rate = math.log(max(self.space.rates)) or 1.0
        self.layer_dim = len(self.space.filter_types) + len(self.space.schemes) + 3
        self.dim = self.layer_dim * len(self.layers) + 2
        # the two whole-plan features count like sqrt(layers) one-hot flips in the distance
        self._summary_scale = summary_weight * math.sqrt(len(self.layers))
        self._macs = np.array([s.macs for s in self.layers], dtype=float)
        self._params = np.array([s.params for s in self.layers], dtype=float)
        self._allowed: dict[tuple[object, ...], frozenset[LayerAction]] = {}

    def check(self, plan: PruningPlan) -> None:
        """Raise :class:`InvalidPlan` unless ``plan`` is a canonical, allowed plan of this model."""
        if not isinstance(plan, PruningPlan):
            raise InvalidPlan(f"expected a PruningPlan, got {type(plan).__name__}")
        if plan.layer_names != self.layer_names or (plan.arch_fingerprint and plan.arch_fingerprint != self.fingerprint):
            raise InvalidPlan(f"plan is for another model (layers {list(plan.layer_names)[:3]}..., fingerprint "
                              f"{plan.arch_fingerprint!r}); the surrogate's model has {len(self.layers)} layers, "
                              f"fingerprint {self.fingerprint!r}")
        decided: list[tuple[LayerSpec, LayerAction]] = []
        for idx, (spec, action) in enumerate(zip(self.layers, plan.actions, strict=False)):
            group = () if spec.coupled_group is None else tuple(
                a for s, a in decided if s.coupled_group == spec.coupled_group)
            key = (idx, group)
            if key not in self._allowed:
                self._allowed[key] = frozenset(allowed_actions(self.space, spec, decided))
            if action not in self._allowed[key]:
                raise InvalidPlan(f"plan is outside the search space at layer {spec.name!r}: {action} is "
                                  f"not an allowed (canonical) action there; allowed e.g. "
                                  f"{[str(a) for a in list(self._allowed[key])[:3]]}; build plans with "
                                  "problem.make_plan / problem.decode")
            decided.append((spec, action))

    def encode(self, plans: Sequence[PruningPlan]) -> np.ndarray:
        """Float64 matrix of shape (len(plans), dim); plans are not validated here."""
        out = np.zeros((len(plans), self.dim))
        n_ft = len(self.space.filter_types)
        for row, plan in enumerate(plans):
            for i, (spec, action) in enumerate(zip(self.layers, plan.actions, strict=False)):
                base = i * self.layer_dim
                out[row, base + self.space.filter_types.index(action.filter_type)] = 1.0
                if action.is_dense:
                    continue
                out[row, base + n_ft + self.space.schemes.index(action.scheme)] = 1.0
                out[row, base + self.layer_dim - 3] = math.log(action.rate) / self._max_log_rate
                if action.block_size is not None:
                    rows, cols = spec.out_channels, spec.in_channels // spec.groups
                    p, q = (v if v else dim for v, dim in zip(action.block_size, (rows, cols), strict=False))
                    out[row, base + self.layer_dim - 2] = math.log2(p) / max(math.log2(rows), 1.0)
                    out[row, base + self.layer_dim - 1] = math.log2(q) / max(math.log2(cols), 1.0)
            keep = np.array([_kept_share(spec, a) for spec, a in zip(self.layers, plan.actions, strict=False)])
            out[row, -2] = self._summary_scale * float(keep @ self._macs) / max(self._macs.sum(), 1.0)
            out[row, -1] = self._summary_scale * float(keep @ self._params) / max(self._params.sum(), 1.0)
        return out


def _kept_share(spec: LayerSpec, action: LayerAction) -> float:
    """Rough share of a layer's weights (and MACs) a decision keeps: filter type, then rate."""
    taps = spec.kernel_size[0] * spec.kernel_size[1] if spec.is_conv else 1
    share = {FilterType.KEEP: 1.0, FilterType.CONV1X1: 1.0 / taps, FilterType.SKIP: 0.0,
             FilterType.DW_SEPARABLE: 1.0 / taps + 1.0 / max(spec.out_channels, 1)}[action.filter_type]
    return share / action.rate


class GPSurrogate:
    """Gaussian-process surrogate (scikit-optimize, Matern 5/2) with a replaceable acquisition.

    Args:
        problem: the problem whose plans are modelled (model, search space).
        acquisition: ``"ei"`` expected improvement (default, NAS-BOWL), ``"pi"`` probability of
            improvement, ``"lcb"`` lower confidence bound (UCB on the reward).
        xi: EI / PI exploration margin (skopt default 0.01).
        kappa: LCB exploration weight (skopt default 1.96).
        pool_size: candidates scored per :meth:`ask`.
        candidates: ``f(n, rng) -> plans``; default uniformly random plans of the problem.
        seed: seed of the candidate generator and of the GP optimizer restarts.
    """

    def __init__(self, problem: SearchProblem, acquisition: Acquisition = "ei", xi: float = 0.01,
                 kappa: float = 1.96, pool_size: int = 100,
                 candidates: Callable[[int, np.random.Generator], list[PruningPlan]] | None = None,
                 seed: int = 0) -> None:
        if acquisition not in ("ei", "pi", "lcb"):
            raise InvalidConfig(f"acquisition must be 'ei', 'pi' or 'lcb', got {acquisition!r}")
        self.encoder = PlanEncoder(problem)
        self.acquisition, self.xi, self.kappa, self.pool_size = acquisition, xi, kappa, pool_size
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self._candidates = candidates or (lambda n, rng: [problem.random_plan(rng) for _ in range(n)])
        self._x: list[np.ndarray] = []
        self._y: list[float] = []
        self._keys: dict[str, int] = {}
        self._model: GaussianProcessRegressor | None = None
        self._asked: dict[int, list[PruningPlan]] = {}
        self.n_predictions = 0

    @property
    def n_observations(self) -> int:
        return len(self._y)

    def ask(self, n: int = 1) -> list[PruningPlan]:
        """The ``n`` best of ``pool_size`` candidates by acquisition; same answer until :meth:`tell`."""
        if n not in self._asked:
            pool = self._candidates(max(self.pool_size, n), self.rng)
            self._asked[n] = self.select(pool, n)
        return list(self._asked[n])

    def tell(self, plans: Sequence[PruningPlan], scores: Sequence[float]) -> None:
        """Add true rewards (higher is better) of plans; refits the GP.

        Raises:
            InvalidPlan: a plan is not a valid plan of this model and search space.
            InvalidConfig: lengths differ or a score is not finite.
        """
        if len(plans) != len(scores):
            raise InvalidConfig(f"tell got {len(plans)} plans and {len(scores)} scores")
        for plan, score in zip(plans, scores, strict=False):
            self.encoder.check(plan)
            if not math.isfinite(score):
                raise InvalidConfig(f"scores must be finite, got {score!r}")
        for plan, x, score in zip(plans, self.encoder.encode(plans), scores, strict=False):
            key = plan.key()
            if key in self._keys:  # repeated plan: keep the latest score
                self._y[self._keys[key]] = float(score)
                continue
            self._keys[key] = len(self._y)
            self._x.append(x)
            self._y.append(float(score))
        self._asked.clear()
        self._fit()

    def predict(self, plans: Sequence[PruningPlan]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted reward mean and std per plan (prior 0 / 1 before any observation)."""
        self.n_predictions += len(plans)
        if self._model is None:
            return np.zeros(len(plans)), np.ones(len(plans))
        # skopt is untyped: its inferred return types cover every return_std / return_cov branch
        mean, std = cast("tuple[np.ndarray, np.ndarray]",
                         self._model.predict(self.encoder.encode(plans), return_std=True))
        return -mean, std

    def acquire(self, plans: Sequence[PruningPlan]) -> np.ndarray:
        """Acquisition value per plan, higher = evaluate first (random before any fit)."""
        self.n_predictions += len(plans)
        if self._model is None:
            return self.rng.random(len(plans))
        x = self.encoder.encode(plans)
        y_opt = -max(self._y)  # the GP models -reward: skopt minimizes
        if self.acquisition == "ei":
            return cast(np.ndarray, gaussian_ei(x, self._model, y_opt=y_opt, xi=self.xi))
        if self.acquisition == "pi":
            return cast(np.ndarray, gaussian_pi(x, self._model, y_opt=y_opt, xi=self.xi))
        return -cast(np.ndarray, gaussian_lcb(x, self._model, kappa=self.kappa))

    def select(self, pool: Sequence[PruningPlan], n: int) -> list[PruningPlan]:
        """The ``n`` plans of ``pool`` with the highest acquisition (distinct, unseen first)."""
        unique = list({p.key(): p for p in pool}.values())
        fresh = [p for p in unique if p.key() not in self._keys] or unique
        values = self.acquire(fresh)
        order = np.argsort(-values, kind="stable")
        return [fresh[i] for i in order[:n]]

    def _fit(self) -> None:
        if len(self._y) < 2:
            return
        kernel = ConstantKernel(1.0, (0.01, 1000.0)) * Matern(
            length_scale=1.0, length_scale_bounds=(0.01, 100.0), nu=2.5)  # isotropic: few points
        model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, noise="gaussian",
                                         n_restarts_optimizer=0, random_state=self.seed)
        with warnings.catch_warnings(), threadpool_limits(1):  # BLAS threads only contend here
            warnings.simplefilter("ignore")
            model.fit(np.asarray(self._x), -np.asarray(self._y))
        self._model = model
