"""Agents by name, for the benchmark harness and ``npas search --agent``.

| name | what |
|---|---|
| ``qbo`` | Q-learning + Bayesian-optimization surrogate (NPAS phase 2) |
| ``qlearning`` | MetaQNN Q-learning without the surrogate (SB3 ``TabularQLearning`` through the env) |
| ``seq2seq`` | TODAES seq2seq policy-gradient controller (MaskablePPO, REINFORCE settings) |
| ``ppo``, ``a2c``, ``dqn``, ``maskable_ppo`` | SB3 algorithms with default MLP policies |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npas_env.errors import EvaluatorNotFound


def _qbo(seed: int, **kw: Any) -> Any:
    from agents.qbo import QBOAgent

    return QBOAgent(use_surrogate=True, seed=seed, **kw)


def _sb3(algo: str, seq2seq: bool) -> Callable[..., Any]:
    def factory(seed: int, **kw: Any) -> Any:
        from agents.sb3_agent import SB3Agent

        return SB3Agent(algo=algo, seq2seq=seq2seq, seed=seed, **kw)
    return factory


_AGENTS: dict[str, Callable[..., Any]] = {
    "qbo": _qbo,
    "qlearning": _sb3("qlearning", False),
    "seq2seq": _sb3("maskable_ppo", True),
    "ppo": _sb3("ppo", False),
    "a2c": _sb3("a2c", False),
    "dqn": _sb3("dqn", False),
    "maskable_ppo": _sb3("maskable_ppo", False),
}


def agent_names() -> list[str]:
    """Registered agent names, sorted."""
    return sorted(_AGENTS)


def make_agent(name: str, seed: int = 0, **kwargs: Any) -> Any:
    """An agent (``name`` + ``run(problem, budget)``) by registered name.

    Raises:
        EvaluatorNotFound: unknown name (kind ``"agent"``, with a did-you-mean suggestion).
    """
    if name not in _AGENTS:
        raise EvaluatorNotFound(name, kind="agent", known=list(_AGENTS))
    return _AGENTS[name](seed, **kwargs)
