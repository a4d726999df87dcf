"""Thread placement: the timing thread is held on one CPU; pool workers do not inherit that."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from compiler_backend import KernelConfig, compile_model
from compiler_backend.affinity import hold_cpu

_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cpus = pytest.mark.skipif(len(_CPUS) < 2, reason="needs thread affinity and 2 CPUs")


def _thread_masks() -> dict[int, str]:
    out = {}
    for status in Path(f"/proc/{os.getpid()}/task").glob("*/status"):
        fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                      if ":\t" in line)
        out[int(status.parent.name)] = fields["Cpus_allowed_list"].strip()
    return out


@needs_two_cpus
def test_hold_cpu_pins_the_calling_thread_and_restores_it() -> None:
    before = os.sched_getaffinity(0)
    with hold_cpu():
        assert os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError), hold_cpu():
        raise RuntimeError("restored even when the block fails")
    assert os.sched_getaffinity(0) == before


@needs_two_cpus
def test_pool_worker_started_while_held_may_use_every_cpu(compiler_cache) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    configs = {name: KernelConfig("spatial", 4, 2, 2) for name in ("0", "2")}
    x = torch.randn(1, 8, 12, 12)
    # verify=False: the check's run would start the worker before the block
    cm = compile_model(model.eval(), x, configs=configs, threads=2, cache_dir=compiler_cache,
                       verify=False)
    with torch.no_grad():
        ref = model(x)  # torch's own threads start here, not inside the block
    out = torch.empty_like(ref)
    cm.view(cm.graph.input).copy_(x)
    before = set(_thread_masks())
    with hold_cpu():  # a worker started here must not inherit the held mask
        cm._run_sample()
    out.copy_(cm.view(cm.graph.output).reshape(ref.shape))
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    full = _thread_masks()[threading.get_native_id()]
    deadline = time.monotonic() + 5.0  # the worker resets its mask when it first runs
    while True:
        new = {tid: mask for tid, mask in _thread_masks().items() if tid not in before}
        if (new and all(mask == full for mask in new.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert new and all(mask == full for mask in new.values()), (new, full)
