"""Phase-3 pruning algorithms selectable by name: ``magnitude``, ``admm``, ``group_lasso``."""

from evaluators.accuracy.algorithms.base import (
    AlgorithmResult,
    PruningAlgorithm,
    TrainSettings,
    algorithm_names,
    make_algorithm,
    register_algorithm,
)

__all__ = ["AlgorithmResult", "PruningAlgorithm", "TrainSettings", "algorithm_names",
           "make_algorithm", "register_algorithm"]
