"""``QBOSearch``: Q-learning proposes, a BO surrogate picks, the real evaluators decide (NPAS phase 2).

Each iteration the epsilon-greedy Q-policy of a :class:`~agents.tabular_q.TabularQLearning`
(the SB3 algorithm, used here without an env) samples ``pool_size`` distinct unseen plans; the :class:`~agents.surrogate.GPSurrogate` ranks them by expected
improvement and only the best ``batch_size`` are evaluated through ``problem.evaluate`` (true
evaluations, counted by ``problem.n_evals``). Their true rewards train both the Q-table (with
replay) and the surrogate. The first ``n_init`` evaluations skip the surrogate (too few points to
fit; NAS-BOWL starts from random samples too). ``use_surrogate=False`` evaluates the Q-agent's
proposals directly: plain MetaQNN-style Q-learning. Defaults and their sources: ``docs/agents.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.base import check_budget
from agents.qlearning import METAQNN_SCHEDULE, epsilon_at
from agents.surrogate import Acquisition, GPSurrogate
from agents.tabular_q import TabularQLearning
from agents.tabular_state import ActionVocabulary
from npas_env.errors import InvalidConfig
from npas_env.plan import LayerAction, PruningPlan
from npas_env.problem import SearchProblem, Trial


class QBOSearch:
    """Q-learning with a Bayesian-optimization surrogate over whole plans.

    Args:
        problem: the search problem; every true evaluation goes through ``problem.evaluate``.
        pool_size: plans the Q-agent proposes per iteration (NAS-BOWL 100).
        batch_size: plans evaluated per iteration (NAS-BOWL 5); scaled to ``budget // 10`` when
            the budget is small.
        use_surrogate: False = Q-learning without BO (evaluate the proposals directly).
        seed: seed of the Q-agent and the surrogate.
        acquisition: surrogate acquisition (``"ei"``, ``"pi"``, ``"lcb"``).
        n_init: evaluations before the surrogate is used; None = ``min(30, max(2 * batch,
            budget // 5))`` (NAS-BOWL 30, scaled down).
        learning_rate, discount, q_init, replay_size: Q-learning settings (MetaQNN defaults).
        epsilon_schedule: (epsilon, models) pairs, scaled to the budget (MetaQNN).
        mutation_share: share of each BO pool made of one/two-layer mutations of the top-10
            evaluated plans (NAS-BOWL uses half); 0 = the whole pool comes from the Q-policy.
        tensorboard_log: directory for ``search/*`` scalars (None = no logging).
        progress_bar: show a tqdm bar over true evaluations.
    """

    def __init__(self, problem: SearchProblem, pool_size: int = 100, batch_size: int = 5,
                 use_surrogate: bool = True, seed: int = 0, acquisition: Acquisition = "ei",
                 n_init: int | None = None, learning_rate: float = 0.01, discount: float = 1.0,
                 q_init: float = 0.5, replay_size: int = 128,
                 epsilon_schedule: Sequence[tuple[float, int]] = METAQNN_SCHEDULE,
                 mutation_share: float = 0.5, tensorboard_log: str | None = None,
                 progress_bar: bool = False) -> None:
        if pool_size < 1 or batch_size < 1:
            raise InvalidConfig(f"pool_size and batch_size must be >= 1, got {pool_size}, {batch_size}")
        if not 0.0 <= mutation_share <= 1.0:
            raise InvalidConfig(f"mutation_share must be in [0, 1], got {mutation_share}")
        self.mutation_share = mutation_share
        self.problem, self.pool_size, self.batch_size = problem, pool_size, batch_size
        self.use_surrogate, self.n_init, self.epsilon_schedule = use_surrogate, n_init, tuple(epsilon_schedule)
        self.tensorboard_log, self.progress_bar = tensorboard_log, progress_bar
        self.q = TabularQLearning.from_problem(problem, learning_rate=learning_rate, gamma=discount,
                                               q_init=q_init, replay_size=replay_size, seed=seed)
        self.surrogate = GPSurrogate(problem, acquisition=acquisition, pool_size=pool_size,
                                     candidates=lambda n, rng: self._pool(n), seed=seed)
        self.proposed: list[PruningPlan] = []
        self._epsilon = 1.0

    @property
    def stats(self) -> dict[str, int]:
        """True evaluations (``problem.n_evals``) and surrogate predictions, kept apart."""
        return {"true_evals": self.problem.n_evals,
                "surrogate_predictions": self.surrogate.n_predictions,
                "proposed": len(self.proposed)}

    def run(self, budget: int) -> Trial | None:
        """Search with at most ``budget`` new true evaluations; the best trial of this run."""
        limit = check_budget(self.problem, budget)
        start = self.problem.n_evals
        batch = min(self.batch_size, max(1, budget // 10))
        n_init = self.n_init if self.n_init is not None else min(30, max(2 * batch, budget // 5))
        writer = self._writer()
        bar = tqdm(total=limit - start, desc="QBO" if self.use_surrogate else "Q", disable=not self.progress_bar)
        while self.problem.n_evals < limit:
            self._epsilon = epsilon_at(self.problem.n_evals - start, budget, self.epsilon_schedule)
            k = min(batch, limit - self.problem.n_evals)
            use_bo = self.use_surrogate and self.surrogate.n_observations >= n_init
            plans = self.surrogate.ask(k) if use_bo else self._propose(k)
            before = self.problem.n_evals
            scores = self.problem.evaluate(plans)
            rewards = [s.reward for s in scores]
            self.q.tell(plans[:len(scores)], rewards)
            if self.use_surrogate:
                self.surrogate.tell(plans[:len(scores)], rewards)
            bar.update(self.problem.n_evals - before)
            self._log(writer)
            if self.problem.n_evals == before:  # nothing new could be proposed: space exhausted
                break
        bar.close()
        if writer is not None:
            writer.close()
        run_trials = self.problem.trials[start:]
        return max(run_trials, key=lambda t: t.reward, default=None)

    def _pool(self, n: int) -> list[PruningPlan]:
        """A BO candidate pool: mutations of the best evaluated plans, the rest from the Q-policy."""
        top = sorted(self.problem.trials, key=lambda t: -t.reward)[:10]
        n_mut = round(n * self.mutation_share) if top else 0
        seen = {t.plan.key() for t in self.problem.trials}
        out: dict[str, PruningPlan] = {}
        for _ in range(5 * n_mut):
            if len(out) >= n_mut:
                break
            parent = top[self.q.rng.integers(len(top))].plan
            actions = mutate_actions(self.q.vocabulary, parent.actions, int(self.q.rng.integers(1, 3)), self.q.rng)
            plan = self.problem.make_plan(actions)
            if plan.key() not in seen and plan.key() not in out:
                out[plan.key()] = plan
        self.proposed.extend(out.values())
        return list(out.values()) + self._propose(n - len(out))

    def _propose(self, n: int) -> list[PruningPlan]:
        """Up to ``n`` distinct plans not evaluated yet, epsilon-greedy from the Q-table."""
        seen = {t.plan.key() for t in self.problem.trials}
        out: dict[str, PruningPlan] = {}
        for attempt in range(20 * n if n > 0 else 0):
            eps = self._epsilon if attempt < 5 * n else 1.0  # greedy stuck on known plans: explore
            plan = self.problem.make_plan(self.q.sample_actions(eps))
            key = plan.key()
            if key in seen or key in out:
                continue
            out[key] = plan
            if len(out) == n:
                break
        self.proposed.extend(out.values())
        return list(out.values())

    def _writer(self) -> Any:
        if self.tensorboard_log is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(self.tensorboard_log)

    def _log(self, writer: Any) -> None:
        if writer is None:
            return
        step = self.problem.n_evals
        best = self.problem.best
        if best is not None:
            writer.add_scalar("search/best_reward", best.reward, step)
        writer.add_scalar("search/true_evals", step, step)
        writer.add_scalar("search/surrogate_predictions", self.surrogate.n_predictions, step)
        writer.add_scalar("search/epsilon", self._epsilon, step)


def mutate_actions(vocabulary: ActionVocabulary, actions: Sequence[LayerAction], n_layers: int,
                   rng: np.random.Generator) -> tuple[LayerAction, ...]:
    """A neighbour of a plan: ``n_layers`` random layers get a random allowed action.

    Later layers whose action became masked (coupled groups) are resampled too.
    """
    size = vocabulary.n_layers
    chosen = set(rng.choice(size, size=min(n_layers, size), replace=False).tolist())
    ids: list[int] = []
    for idx, action in enumerate(actions):
        allowed = vocabulary.allowed_after(idx, ids)
        current = vocabulary.id_of(idx, action)
        if idx in chosen or current not in allowed.id_set:
            current = int(allowed.ids[rng.integers(len(allowed.ids))])
        ids.append(current)
    return vocabulary.decode(ids)


@dataclass
class QBOAgent:
    """:class:`~agents.base.SearchAgent` front end of :class:`QBOSearch` (settings as a dataclass).

    Attributes:
        use_surrogate: False = Q-learning without BO.
        seed: seed of the run.
        pool_size: Q proposals per iteration.
        batch_size: true evaluations per iteration.
        kwargs: any other :class:`QBOSearch` argument.
    """

    use_surrogate: bool = True
    seed: int = 0
    pool_size: int = 100
    batch_size: int = 5
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "qlearning_bo" if self.use_surrogate else "qlearning"

    def run(self, problem: SearchProblem, budget: int) -> Trial | None:
        search = QBOSearch(problem, pool_size=self.pool_size, batch_size=self.batch_size,
                           use_surrogate=self.use_surrogate, seed=self.seed, **self.kwargs)
        return search.run(budget)
