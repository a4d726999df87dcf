"""Run the real ``npas search`` CLI with deterministic latency and pause points, for kill tests.

Usage: ``python tests/npas_env/search_harness.py search --out RUN --resume`` (any ``npas``
arguments), or ``... serve``: import everything once, then for every stdin line
``<pause point> <npas arguments...>`` (point ``-`` = none) fork a child that runs the command,
print ``CHILD <pid>`` and, when it ends, ``EXIT <pid> <status>`` (negative: killed by that
signal). Forking saves the ~4 s of imports per run that a kill test would otherwise pay.

The process is the production pipeline with two test-only changes, both applied here and
nowhere in the package:

* latency comes from the ``analytic`` model instead of timing compiled code, so an interrupted
  and an uninterrupted run see the same numbers and the search is deterministic; one-shot
  accuracy scores a quarter of the validation split (cheaper, still deterministic);
* ``$NPAS_TEST_PAUSE`` names a point where the process prints ``PAUSED <point>`` on stdout and
  sleeps until it is killed:

  ``eval:K``    inside the K-th call of the one-shot accuracy evaluator (this process), before
                its result exists;
  ``write:K``   inside the cache transaction storing the K-th accuracy result: rows inserted,
                ``COMMIT`` not yet run;
  ``stored:K``  right after that transaction committed;
  ``stage:TEXT`` at the start of the pipeline stage whose ``==>`` line begins with TEXT,
                spaces removed (``stage:phase1``, ``stage:phase3``);
  ``rename:NAME`` an atomic write of the run file NAME has its complete temp file on disk and is
                about to rename it into place.

``$NPAS_TEST_EVAL_LOG`` (a file) gets one line ``<pid> <plan key>`` per plan handed to the
accuracy evaluator, so a test can count true evaluations across killed processes.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

POINT = os.environ.get("NPAS_TEST_PAUSE", "")
EVAL_LOG = os.environ.get("NPAS_TEST_EVAL_LOG")
_state = threading.local()
_calls = 0


def pause(point: str) -> None:
    """Stop here (forever) if ``point`` is the configured pause point."""
    if point == POINT:
        print(f"PAUSED {point}", flush=True)
        while True:
            time.sleep(60)


class PausingConnection(sqlite3.Connection):
    """Pauses before the ``COMMIT`` of a transaction this thread armed, and right after it."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        armed = getattr(_state, "armed", None)
        if armed is None or sql != "COMMIT":
            return super().execute(sql, *args)
        _state.armed = None
        pause(f"write:{armed}")
        cursor = super().execute(sql, *args)
        pause(f"stored:{armed}")
        return cursor


def install() -> None:
    """Patch the package in this process (see the module docstring)."""
    import evaluators.registry
    import npas_env.commands.search as search_command
    import npas_env.search_job as search_job
    from evaluators.accuracy.oneshot import OneShotAccuracy
    from evaluators.latency.analytic import AnalyticLatency

    class PausingAccuracy(OneShotAccuracy):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**kwargs, "val_fraction": 0.25})  # a quarter of the scoring

        def evaluate(self, context: Any, plans: Any) -> Any:
            global _calls
            _calls += 1
            if EVAL_LOG:
                with open(EVAL_LOG, "a") as fh:
                    fh.writelines(f"{os.getpid()} {p.key()}\n" for p in plans)
            pause(f"eval:{_calls}")
            results = super().evaluate(context, plans)
            _state.armed = _calls  # the caller's next COMMIT in this thread stores these
            return results

    def deterministic_latency(name: str, **kwargs: Any) -> Any:
        return AnalyticLatency(threads=kwargs.get("threads", 1))

    def pausing_stage(text: str) -> None:
        stage(text)
        pause(f"stage:{text.split(':')[0].replace(' ', '')}")

    stage = search_command._stage
    search_command._stage = pausing_stage
    search_job.OneShotAccuracy = PausingAccuracy
    search_job.make_latency = deterministic_latency
    evaluators.registry.make_latency = deterministic_latency  # phase 3 imports it at call time
    connect = sqlite3.connect
    sqlite3.connect = lambda *a, **kw: connect(*a, factory=PausingConnection, **kw)  # type: ignore[assignment]
    replace = os.replace

    def pausing_replace(src: Any, dst: Any, **kw: Any) -> None:
        pause(f"rename:{Path(dst).name}")
        replace(src, dst, **kw)

    os.replace = pausing_replace


def serve() -> None:
    """The fork server (see the module docstring)."""
    global POINT
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (what every run imports lazily: load it once)
    import torch
    import torch.utils.tensorboard  # noqa: F401
    import tqdm.auto  # noqa: F401

    from npas_env.cli import main
    from npas_env.data import load_dataset
    from npas_env.layers import extract_layers
    from npas_env.zoo import build_model
    from npas_env.zoo.train import make_sgd

    # the first shape propagation and the first optimizer step import much of torch lazily
    # (seconds each); single-threaded torch (OMP_NUM_THREADS=1) keeps the fork safe
    model = build_model("small_cnn", num_classes=10)
    extract_layers(model, torch.zeros(1, *load_dataset("digits").input_shape))
    optimizer = make_sgd(model, 0.01)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()

    for line in sys.stdin:
        point, *args = line.split()
        pid = os.fork()
        if pid == 0:
            POINT = "" if point == "-" else point
            code = 1
            try:
                code = main(args)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"CHILD {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"EXIT {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    install()
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        from npas_env.cli import main

        sys.exit(main(sys.argv[1:]))
