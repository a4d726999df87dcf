"""Search agents: seq2seq policy gradient (TODAES 5.1), Q-learning + BO (NPAS), SB3 front ends.

Everything is imported lazily (``from agents import QBOSearch``) so ``import agents`` stays cheap.
See ``docs/agents.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
