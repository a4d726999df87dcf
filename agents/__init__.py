"""Search agents: seq2seq policy gradient (TODAES 5.1), Q-learning + BO (NPAS), SB3 front ends.

Everything is imported lazily (``from agents import QBOSearch``) so ``import agents`` stays cheap.
See ``docs/agents.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # static view of the lazy exports below
    from agents.base import (
        BudgetCallback,
        ProblemScorer,
        SearchAgent,
        allowed_actions,
        make_problem_env,
    )
    from agents.qbo import QBOAgent, QBOSearch, mutate_actions
    from agents.qlearning import METAQNN_SCHEDULE, epsilon_at
    from agents.sb3_agent import FlatDiscreteAction, SB3Agent
    from agents.seq2seq import (
        MaskableSeq2SeqPolicy,
        Seq2SeqExtractor,
        Seq2SeqPolicy,
        make_reinforce,
    )
    from agents.sequence_wrapper import SequenceObservation
    from agents.surrogate import GPSurrogate, PlanEncoder, Surrogate
    from agents.tabular_q import TabularQLearning, TabularQPolicy
    from agents.tabular_state import ActionVocabulary, TabularObservation

_EXPORTS = {
    "SearchAgent": "agents.base", "ProblemScorer": "agents.base", "make_problem_env": "agents.base",
    "BudgetCallback": "agents.base", "allowed_actions": "agents.base",
    "SequenceObservation": "agents.sequence_wrapper",
    "Seq2SeqExtractor": "agents.seq2seq", "Seq2SeqPolicy": "agents.seq2seq",
    "MaskableSeq2SeqPolicy": "agents.seq2seq", "make_reinforce": "agents.seq2seq",
    "Surrogate": "agents.surrogate", "GPSurrogate": "agents.surrogate", "PlanEncoder": "agents.surrogate",
    "epsilon_at": "agents.qlearning", "METAQNN_SCHEDULE": "agents.qlearning",
    "TabularQLearning": "agents.tabular_q", "TabularQPolicy": "agents.tabular_q",
    "ActionVocabulary": "agents.tabular_state", "TabularObservation": "agents.tabular_state",
    "mutate_actions": "agents.qbo",
    "QBOSearch": "agents.qbo", "QBOAgent": "agents.qbo",
    "SB3Agent": "agents.sb3_agent", "FlatDiscreteAction": "agents.sb3_agent",
}

__all__ = [  # keep equal to sorted(_EXPORTS); a literal so type checkers can read it
    "ActionVocabulary", "BudgetCallback", "FlatDiscreteAction", "GPSurrogate", "METAQNN_SCHEDULE",
    "MaskableSeq2SeqPolicy", "PlanEncoder", "ProblemScorer", "QBOAgent", "QBOSearch", "SB3Agent",
    "SearchAgent", "Seq2SeqExtractor", "Seq2SeqPolicy", "SequenceObservation", "Surrogate",
    "TabularObservation", "TabularQLearning", "TabularQPolicy", "allowed_actions", "epsilon_at",
    "make_problem_env", "make_reinforce", "mutate_actions",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
