"""Baseline search methods (CleanRL style: one readable file each), run by name.

``make_baseline(name, seed, **settings)`` returns an object with ``run(problem, budget)`` (the
``agents.base.SearchAgent`` protocol); see :mod:`baselines.registry` for the names.
"""

from baselines.registry import Baseline, baseline_names, make_baseline

__all__ = ["Baseline", "baseline_names", "make_baseline"]
