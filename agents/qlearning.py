"""Tabular Q-learning over per-layer decisions, after MetaQNN (Baker et al.; NPAS "meta-modeling").

State ``s_i = (layer index i, previous layer's action)``; action = one distinct canonical
:class:`LayerAction` allowed by the layer's mask (the masked ``MultiDiscrete`` product with
equivalent index vectors merged, e.g. every scheme at rate 1.0 is "dense"). Masks depend on
earlier decisions of coupled layers, so the allowed set is computed from the decided prefix.

MetaQNN settings (``bowenbaker/metaqnn``, quoted in ``npas_spec.md`` section 3): learning rate
0.01, discount 1.0, Q initialised to 0.5, terminal-only reward, updates applied backwards along
the trajectory, 128 stored trajectories replayed after each new evaluation, and the epsilon
schedule :data:`METAQNN_SCHEDULE` (epsilon, number of models), which :func:`epsilon_at` scales to
the evaluation budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.base import allowed_actions
from npas_env.errors import InvalidConfig
from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan
from npas_env.problem import SearchProblem
from npas_env.search_space import sample_masked_action

#: MetaQNN (epsilon, unique models sampled at that epsilon) for CIFAR-10.
METAQNN_SCHEDULE: tuple[tuple[float, int], ...] = (
    (1.0, 1500), (0.9, 100), (0.8, 100), (0.7, 100), (0.6, 150), (0.5, 150), (0.4, 150),
    (0.3, 150), (0.2, 150), (0.1, 150))

State = tuple[int, LayerAction | None]


def epsilon_at(done: int, budget: int,
               schedule: Sequence[tuple[float, int]] = METAQNN_SCHEDULE) -> float:
    """Epsilon after ``done`` of ``budget`` evaluations, the schedule's counts scaled to ``budget``."""
    total = sum(n for _, n in schedule)
    if total <= 0 or budget <= 0:
        raise InvalidConfig(f"epsilon schedule and budget must be positive, got {schedule}, {budget}")
    seen = 0.0
    for eps, n in schedule:
        seen += n * budget / total
        if done < seen:
            return float(eps)
    return float(schedule[-1][0])


class QLearner:
    """Tabular Q over (layer index, previous action) -> action, with MetaQNN replay.

    Args:
        problem: the problem (layers, search space) plans are built for.
        learning_rate: alpha (MetaQNN 0.01).
        discount: gamma (MetaQNN 1.0).
        q_init: initial Q of every pair (MetaQNN 0.5, about the reward of an average model).
        replay_size: stored trajectories replayed per new evaluation (MetaQNN 128).
        seed: seed of exploration and replay sampling.
    """

    def __init__(self, problem: SearchProblem, learning_rate: float = 0.01, discount: float = 1.0,
                 q_init: float = 0.5, replay_size: int = 128, seed: int = 0) -> None:
        if not 0.0 < learning_rate <= 1.0 or not 0.0 <= discount <= 1.0:
            raise InvalidConfig(f"need 0 < learning_rate <= 1 and 0 <= discount <= 1, got "
                                f"{learning_rate}, {discount}")
        self.problem = problem
        self.layers: tuple[LayerSpec, ...] = problem.layers
        self.space = problem.space
        self.alpha, self.gamma, self.q_init, self.replay_size = learning_rate, discount, q_init, replay_size
        self.rng = np.random.default_rng(seed)
        self.q: dict[State, dict[LayerAction, float]] = {}
        self.memory: list[tuple[tuple[LayerAction, ...], float]] = []
        self._allowed: dict[tuple[object, ...], tuple[tuple[LayerAction, ...], frozenset[LayerAction]]] = {}

    # ------------------------------------------------------------------ policy
    def allowed(self, idx: int, prefix: Sequence[LayerAction]) -> tuple[LayerAction, ...]:
        """Distinct canonical actions allowed at layer ``idx`` after the decisions ``prefix``."""
        return self._allowed_sets(idx, prefix)[0]

    def sample(self, epsilon: float) -> tuple[PruningPlan, tuple[LayerAction, ...]]:
        """One plan, epsilon-greedy layer by layer; random choices are uniform over index vectors."""
        actions: list[LayerAction] = []
        for idx, spec in enumerate(self.layers):
            decided = list(zip(self.layers, actions, strict=False))
            if self.rng.random() < epsilon:
                vec = sample_masked_action(self.space.nvec, self.space.action_mask(spec, decided), self.rng)
                actions.append(self.space.decode(spec, vec, decided, check=False))
            else:
                actions.append(self._greedy(idx, actions))
        plan = self.problem.make_plan(actions)
        return plan, plan.actions

    def mutate(self, actions: Sequence[LayerAction], n_layers: int = 1) -> tuple[PruningPlan, tuple[LayerAction, ...]]:
        """A neighbour of a plan: ``n_layers`` random layers get a random allowed action.

        Later layers whose action became masked (coupled groups) are resampled too.
        """
        chosen = set(self.rng.choice(len(self.layers), size=min(n_layers, len(self.layers)), replace=False).tolist())
        out: list[LayerAction] = []
        for idx, action in enumerate(actions):
            options, option_set = self._allowed_sets(idx, out)
            if idx in chosen or action not in option_set:
                action = options[self.rng.integers(len(options))]
            out.append(action)
        plan = self.problem.make_plan(out)
        return plan, plan.actions

    def _greedy(self, idx: int, prefix: Sequence[LayerAction]) -> LayerAction:
        options, option_set = self._allowed_sets(idx, prefix)
        row = self.q.get(self._state(idx, prefix), {})
        seen = {a: v for a, v in row.items() if a in option_set}
        best = max(seen.values(), default=-np.inf)
        unseen = [a for a in options if a not in seen] if len(seen) < len(options) else []
        if unseen and self.q_init > best:
            return unseen[self.rng.integers(len(unseen))]
        ties = [a for a, v in seen.items() if v == best] + (unseen if self.q_init == best else [])
        return ties[self.rng.integers(len(ties))]

    # ------------------------------------------------------------------ learning
    def tell(self, trajectories: Sequence[Sequence[LayerAction]], rewards: Sequence[float]) -> None:
        """Store evaluated trajectories with their true rewards, update on them, then replay."""
        for actions, reward in zip(trajectories, rewards, strict=False):
            self.memory.append((tuple(actions), float(reward)))
            self.update(actions, float(reward))
            self.replay(self.replay_size)

    def replay(self, n: int) -> None:
        """Replay ``n`` stored trajectories sampled uniformly (MetaQNN experience replay)."""
        if not self.memory:
            return
        for i in self.rng.integers(len(self.memory), size=n):
            actions, reward = self.memory[int(i)]
            self.update(actions, reward)

    def update(self, actions: Sequence[LayerAction], reward: float) -> None:
        """Q-learning updates backwards along one trajectory; reward only at the end."""
        last = len(actions) - 1
        for t in range(last, -1, -1):
            state = self._state(t, actions[:t])
            row = self.q.setdefault(state, {})
            old = row.get(actions[t], self.q_init)
            target = reward if t == last else self.gamma * self._max_q(t + 1, actions[:t + 1])
            row[actions[t]] = old + self.alpha * (target - old)

    def value(self, idx: int, prefix: Sequence[LayerAction], action: LayerAction) -> float:
        """Current Q of choosing ``action`` at layer ``idx`` after ``prefix``."""
        return self.q.get(self._state(idx, prefix), {}).get(action, self.q_init)

    # ------------------------------------------------------------------ helpers
    def _max_q(self, idx: int, prefix: Sequence[LayerAction]) -> float:
        options, option_set = self._allowed_sets(idx, prefix)
        row = self.q.get(self._state(idx, prefix), {})
        values = [v for a, v in row.items() if a in option_set]
        if len(values) < len(options):
            values.append(self.q_init)
        return max(values)

    @staticmethod
    def _state(idx: int, prefix: Sequence[LayerAction]) -> State:
        return (idx, prefix[idx - 1] if idx > 0 else None)

    def _allowed_sets(self, idx: int, prefix: Sequence[LayerAction]):
        spec = self.layers[idx]
        group = () if spec.coupled_group is None else tuple(
            a for s, a in zip(self.layers, prefix, strict=False) if s.coupled_group == spec.coupled_group)
        key = (idx, group)
        hit = self._allowed.get(key)
        if hit is None:
            distinct = allowed_actions(self.space, spec, list(zip(self.layers, prefix, strict=False)))
            hit = (distinct, frozenset(distinct))
            self._allowed[key] = hit
        return hit
