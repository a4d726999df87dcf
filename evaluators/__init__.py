"""Accuracy and latency evaluators (see ``docs/ARCHITECTURE.md``)."""

# npas_env registers its envs on import and that pulls in evaluators.context; initializing it
# first keeps ``import evaluators.<anything>`` working as the first import of a process (e.g. a
# spawned pool worker unpickling an evaluator).
import npas_env  # noqa: F401
