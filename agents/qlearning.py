"""MetaQNN's exploration schedule (Baker et al.; NPAS "meta-modeling"), scaled to a budget.

The Q-learning itself is :class:`agents.tabular_q.TabularQLearning` (an SB3 algorithm); this
module holds the schedule it and ``agents.qbo.QBOSearch`` share. MetaQNN settings
(``bowenbaker/metaqnn``, quoted in ``npas_spec.md`` section 3): learning rate 0.01, discount 1.0,
Q initialised to 0.5, terminal-only reward, updates applied backwards along the trajectory, 128
stored trajectories replayed after each new evaluation, and the epsilon schedule
:data:`METAQNN_SCHEDULE` (epsilon, number of unique models), which :func:`epsilon_at` scales to the
evaluation budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from npas_env.errors import InvalidConfig

#: MetaQNN (epsilon, unique models sampled at that epsilon) for CIFAR-10.
METAQNN_SCHEDULE: tuple[tuple[float, int], ...] = (
    (1.0, 1500), (0.9, 100), (0.8, 100), (0.7, 100), (0.6, 150), (0.5, 150), (0.4, 150),
    (0.3, 150), (0.2, 150), (0.1, 150))


def epsilon_at(done: int, budget: int,
               schedule: Sequence[tuple[float, int]] = METAQNN_SCHEDULE) -> float:
    """Epsilon after ``done`` of ``budget`` evaluations, the schedule's counts scaled to ``budget``.

    Raises:
        InvalidConfig: an empty schedule, non-positive counts or budget, or epsilon outside [0, 1].
    """
    total = sum(n for _, n in schedule)
    if total <= 0 or budget <= 0 or any(n < 0 or not 0.0 <= eps <= 1.0 for eps, n in schedule):
        raise InvalidConfig(f"epsilon schedule needs (epsilon in [0, 1], count >= 0) pairs with a positive "
                            f"total and a positive budget, got {schedule}, {budget}")
    seen = 0.0
    for eps, n in schedule:
        seen += n * budget / total
        if done < seen:
            return float(eps)
    return float(schedule[-1][0])
