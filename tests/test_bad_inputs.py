"""A catalogue of bad inputs: each gives an ``NpasError`` (CLI: exit 2, one line) saying what's wrong.

API cases are ``(call, error type, message pattern)``; the call gets a :class:`Kit` with a tiny
env and a scratch directory. CLI cases are argv lists run through ``npas_env.cli.main``; they must
return 2 and print exactly one ``npas <command>: error: ...`` line, never a traceback.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.cache import EvaluationCache
from evaluators.faulty import FaultyEvaluator
from evaluators.latency.lut_table import LatencyTable
from evaluators.pool import EvaluationPool
from evaluators.registry import make_accuracy, make_latency
from npas_env.bench import make_method, run_benchmark
from npas_env.cli import main
from npas_env.data import load_dataset
from npas_env.env import NPASEnv
from npas_env.errors import (
    CacheError,
    EvaluatorNotFound,
    InvalidAction,
    InvalidConfig,
    InvalidModel,
    InvalidPlan,
    NpasError,
)
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem
from npas_env.pruning import prune_mask
from npas_env.reward import make_reward
from npas_env.zoo import build_model
from npas_env.zoo.pretrained import _save_checkpoint, checkpoint_path, pretrained
from tests.conftest import TinyNet

GARBAGE = bytes(range(256)) * 4


@dataclass
class Kit:
    """What a case may use: a tiny env (fresh per case) and a scratch directory."""

    env: NPASEnv
    tmp: Path
    written: dict[Path, bytes] = field(default_factory=dict)

    def file(self, name: str, data: bytes | str, folder: Path | None = None) -> Path:
        """Write a scratch file; the test checks it is unchanged after the error."""
        path = (folder or self.tmp) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self.written[path] = path.read_bytes()
        return path

    def plan_file(self) -> Path:
        plan = PruningPlan.dense(self.env.context.layer_names, self.env.context.arch_fingerprint)
        return self.file("plan.json", plan.to_json())


def tiny_env(**kwargs: Any) -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), **kwargs)


def other_plan(kit: Kit) -> PruningPlan:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    env = NPASEnv(net, torch.randn(1, 3, 8, 8))
    return PruningPlan.dense(env.context.layer_names, env.context.arch_fingerprint)


def edited_plan(kit: Kit, rate: str) -> Path:
    """A plan file whose first layer has ``"rate": <rate>`` (raw JSON text, e.g. ``1e999``)."""
    text = kit.plan_file().read_text().replace('"rate": 1.0', f'"rate": {rate}', 1)
    return kit.file("edited.json", text)


def foreign_sqlite(kit: Kit) -> Path:
    path = kit.tmp / "foreign.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE music (title TEXT)")
    conn.commit()
    conn.close()
    kit.written[path] = path.read_bytes()
    return path


def corrupt_checkpoint(kit: Kit) -> Any:
    path = checkpoint_path("small_cnn", "digits", cache_dir=kit.tmp)
    kit.file(path.name, GARBAGE[:300])
    return pretrained("small_cnn", "digits", cache_dir=kit.tmp, progress=False)


W = torch.randn(8, 4, 3, 3)
NAN_W = W.clone().index_fill_(0, torch.tensor([1]), math.nan)

# (id, call, error type, regex the message must match).
API_CASES: list[tuple[str, Callable[[Kit], Any], type[Exception], str]] = [
    ("action-string", lambda k: k.env.step("left"), InvalidAction, "action"),
    ("action-short", lambda k: k.env.step(np.array([0, 0])), InvalidAction, "action"),
    ("action-nested", lambda k: k.env.step([[0, 0, 0, 0]]), InvalidAction, "action"),
    ("action-nan", lambda k: k.env.step(np.array([0.0, math.nan, 0.0, 0.0])), InvalidAction, "action"),
    ("action-out-of-range", lambda k: k.env.step(np.array([0, 99, 0, 0])), InvalidAction, "99|range"),
    ("action-negative", lambda k: k.env.step(np.array([-1, 0, 0, 0])), InvalidAction, "-1|range"),
    ("mask-nan-weights", lambda k: prune_mask(NAN_W, Scheme.FILTER, 2.0), NpasError, "NaN|finite"),
    ("mask-nan-rate", lambda k: prune_mask(W, Scheme.FILTER, math.nan), NpasError, "rate"),
    ("mask-negative-rate", lambda k: prune_mask(W, Scheme.FILTER, -2.0), NpasError, "rate"),
    ("mask-infinite-rate", lambda k: prune_mask(W, Scheme.FILTER, math.inf), NpasError, "rate"),
    ("plan-huge-rate", lambda k: PruningPlan.load(edited_plan(k, rate="1e999")), InvalidPlan, "rate"),
    ("plan-nan-rate", lambda k: PruningPlan.load(edited_plan(k, rate="NaN")), InvalidPlan, "rate"),
    ("plan-negative-rate", lambda k: PruningPlan.load(edited_plan(k, rate="-4.0")), InvalidPlan, "rate"),
    ("mask-unknown-scheme", lambda k: prune_mask(W, "filtr", 2.0), NpasError, "filtr"),
    ("action-rate-below-1", lambda k: LayerAction(Scheme.FILTER, 0.5), InvalidAction, "rate"),
    ("action-rate-inf", lambda k: LayerAction(Scheme.FILTER, math.inf), InvalidAction, "rate"),
    ("empty-model", lambda k: NPASEnv(nn.Sequential(), torch.randn(1, 3, 8, 8)), InvalidModel,
     "prunable|empty"),
    ("no-prunable-layers", lambda k: NPASEnv(nn.Sequential(nn.ReLU()), torch.randn(1, 3, 8, 8)),
     InvalidModel, "prunable"),
    ("mismatched-example-input", lambda k: NPASEnv(TinyNet(), torch.randn(1, 5, 16, 16)),
     InvalidModel, "input"),
    ("latency-budget-zero", lambda k: tiny_env(latency_budget_ms=0), InvalidConfig, "latency_budget_ms"),
    ("latency-budget-negative", lambda k: tiny_env(latency_budget_ms=-1.0), InvalidConfig,
     "latency_budget_ms"),
    ("latency-budget-nan", lambda k: tiny_env(latency_budget_ms=math.nan), InvalidConfig,
     "latency_budget_ms"),
    ("search-budget-negative", lambda k: SearchProblem.from_env(k.env, budget=-3), InvalidConfig, "budget"),
    ("bench-budget-zero", lambda k: run_benchmark(["random"], 1, 0, out_dir=k.tmp), InvalidConfig, "budget"),
    ("bench-no-seeds", lambda k: run_benchmark(["random"], 0, 2, out_dir=k.tmp), InvalidConfig, "seed"),
    ("unknown-accuracy", lambda k: make_accuracy("proxi"), EvaluatorNotFound, "did you mean 'proxy'"),
    ("unknown-latency", lambda k: make_latency("analytc"), EvaluatorNotFound, "did you mean 'analytic'"),
    ("unknown-env-evaluator", lambda k: tiny_env(accuracy="prox"), EvaluatorNotFound, "did you mean"),
    ("unknown-reward", lambda k: make_reward("npass"), EvaluatorNotFound, "npass"),
    ("unknown-model", lambda k: build_model("resnet2O"), EvaluatorNotFound, "did you mean 'resnet20'"),
    ("unknown-dataset", lambda k: load_dataset("digit"), EvaluatorNotFound, "did you mean 'digits'"),
    ("unknown-agent", lambda k: make_method("randon", 0), EvaluatorNotFound, "did you mean 'random'"),
    ("plan-missing", lambda k: PruningPlan.load(k.tmp / "nope.json"), InvalidPlan, "cannot read"),
    ("plan-directory", lambda k: PruningPlan.load(k.tmp), InvalidPlan, "cannot read"),
    ("plan-truncated", lambda k: PruningPlan.load(k.file("t.json", k.plan_file().read_text()[:40])),
     InvalidPlan, "not valid JSON"),
    ("plan-binary", lambda k: PruningPlan.load(k.file("b.json", GARBAGE)), InvalidPlan, "plan"),
    ("plan-foreign-json", lambda k: PruningPlan.load(k.file("f.json", '{"name": "x", "layers": 3}')),
     InvalidPlan, "plan|format"),
    ("plan-json-list", lambda k: PruningPlan.load(k.file("l.json", "[1, 2]")), InvalidPlan, "plan|format"),
    ("plan-other-model", lambda k: k.env.scorer.score([other_plan(k)]), InvalidPlan, "another model"),
    ("plan-not-a-plan", lambda k: k.env.scorer.score(["plan.json"]), InvalidPlan, "PruningPlan"),
    ("cache-garbage", lambda k: EvaluationCache(k.file("c.sqlite", GARBAGE)), CacheError, "c.sqlite"),
    ("cache-foreign-sqlite", lambda k: EvaluationCache(foreign_sqlite(k)), CacheError, "foreign.sqlite"),
    ("cache-is-directory", lambda k: EvaluationCache(k.tmp), CacheError, "cache"),
    ("lut-garbage", lambda k: LatencyTable.load(k.file("t.json", GARBAGE)), CacheError, "latency table"),
    ("lut-truncated", lambda k: LatencyTable.load(k.file("t.json", '{"format": "npas-lut/1", "ent')),
     CacheError, "truncated"),
    ("lut-foreign-json", lambda k: LatencyTable.load(k.file("t.json", '{"a": 1}')), CacheError,
     "latency table|format"),
    ("checkpoint-corrupt", corrupt_checkpoint, InvalidModel, "unreadable"),
    ("faulty-bad-probability", lambda k: FaultyEvaluator(p_hang=-0.1), InvalidConfig, "p_hang"),
    ("pool-zero-workers", lambda k: EvaluationPool(FaultyEvaluator(), "accuracy", workers=0),
     InvalidConfig, "workers"),
    ("pool-bad-timeout", lambda k: EvaluationPool(FaultyEvaluator(), "latency", timeout_s=0),
     InvalidConfig, "timeout_s"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_bad_input_raises_a_clear_npas_error(call, error, pattern, tmp_path):
    kit = Kit(tiny_env(), tmp_path)
    kit.env.reset(seed=0)
    with pytest.raises(NpasError) as info:
        call(kit)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert re.search(pattern, str(info.value)), str(info.value)
    for path, data in kit.written.items():  # the bad file was left as it was
        assert path.read_bytes() == data, f"{path} was modified"


# ------------------------------------------------------------------------------------------ CLI
def random_checkpoint(cache: Path) -> None:
    """A randomly initialised small_cnn where ``pretrained`` looks (training takes minutes)."""
    torch.manual_seed(0)
    path = checkpoint_path("small_cnn", "digits", cache_dir=cache / "pretrained")
    _save_checkpoint(path, "small_cnn", build_model("small_cnn", num_classes=10), 10, {})


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch dir with plan files; the cache dir holds an untrained small_cnn checkpoint."""
    monkeypatch.setenv("NPAS_CACHE_DIR", str(tmp_path / "cache"))
    random_checkpoint(tmp_path / "cache")
    kit = Kit(tiny_env(), tmp_path)
    kit.plan_file()  # plan.json: a plan of the tiny test model, not of small_cnn
    kit.file("truncated.json", '{"format": "npas-plan/1", "layers": [{"na')
    kit.file("foreign.json", json.dumps({"format": "onnx-graph/3", "nodes": []}))
    kit.file("binary.json", GARBAGE)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return tmp_path


CLI_CASES: list[tuple[str, list[str], str]] = [
    ("evaluate-missing-plan", ["evaluate", "{d}/nope.json"], "cannot read plan file"),
    ("evaluate-directory-plan", ["evaluate", "{d}/real"], "cannot read plan file"),
    ("evaluate-truncated-plan", ["evaluate", "{d}/truncated.json"], "not valid JSON"),
    ("evaluate-foreign-plan", ["evaluate", "{d}/foreign.json"], "plan"),
    ("evaluate-binary-plan", ["evaluate", "{d}/binary.json"], "plan"),
    ("evaluate-plan-of-other-model", ["evaluate", "{d}/plan.json"], "another model"),
    ("evaluate-unknown-model", ["evaluate", "{d}/plan.json", "--model", "smal_cnn"], "did you mean"),
    ("evaluate-unknown-dataset", ["evaluate", "{d}/plan.json", "--data", "digit"], "did you mean 'digits'"),
    ("evaluate-unknown-accuracy", ["evaluate", "{d}/plan.json", "--accuracy", "proxi"],
     "did you mean 'proxy'"),
    ("evaluate-unknown-latency", ["evaluate", "{d}/plan.json", "--latency", "analytc"],
     "did you mean 'analytic'"),
    ("evaluate-negative-latency-budget", ["evaluate", "{d}/plan.json", "--latency-budget-ms", "-1"],
     "latency_budget_ms"),
    ("evaluate-zero-latency-budget", ["evaluate", "{d}/plan.json", "--latency-budget-ms", "0"],
     "latency_budget_ms"),
    ("bench-unknown-agent", ["bench", "--agents", "randon", "--budget", "2", "--out", "{d}/b"],
     "did you mean 'random'"),
    ("bench-zero-budget", ["bench", "--agents", "random", "--budget", "0", "--out", "{d}/b"], "budget"),
    ("bench-negative-budget", ["bench", "--agents", "random", "--budget", "-5", "--out", "{d}/b"], "budget"),
    ("bench-zero-seeds", ["bench", "--agents", "random", "--budget", "2", "--seeds", "0", "--out", "{d}/b"],
     "seed"),
    ("search-symlink-out", ["search", "--model", "small_cnn", "--agent", "random", "--out", "{d}/link"],
     "symlink"),
    ("search-unknown-agent", ["search", "--model", "small_cnn", "--agent", "randon", "--out", "{d}/s"],
     "did you mean 'random'"),
    ("demo-unknown-env", ["demo", "--env", "npas/PruneNothing-v0"], "PruneNothing"),
]


@pytest.mark.parametrize(("argv", "pattern"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_exits_2_with_one_clear_line(argv, pattern, cli_dir, capsys):
    before = {p: p.read_bytes() for p in cli_dir.rglob("*") if p.is_file()}
    code = main([a.format(d=cli_dir) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"npas {argv[0]}: error: ") and re.search(pattern, lines[0]), lines[0]
    assert {p: p.read_bytes() for p in before} == before  # nothing was overwritten
    assert not (cli_dir / "real").exists() or not any((cli_dir / "real").iterdir())
