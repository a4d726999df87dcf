"""``build_lut``: profile a grid of layer settings into a :class:`LatencyTable` (resumable).

The CLI (``npas build-lut --device NAME --out FILE``) mounts :func:`add_build_lut_parser`::

    sub = parser.add_subparsers()
    add_build_lut_parser(sub)          # sets args.func = run_build_lut
    args = parser.parse_args(); args.func(args)

or runs ``python -m evaluators.latency.lut_builder --device NAME --out FILE``. With ``--model NAME``
the command builds a model-specific table instead (each layer timed inside the whole compiled
model, :mod:`evaluators.latency.model_builder`).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.latency.lut_table import (
    LAYER_TYPES,
    LatencyTable,
    LayerSetting,
    TableEntry,
    backend_version,
)
from evaluators.latency.profiling import measure_settings, pin_threads, setting_groups
from npas_env.errors import BackendError, InvalidConfig

#: (settings, cascade) -> [(per-layer ms, relative IQR, rounds)] for settings of one shape.
SettingRunner = Callable[[Sequence[LayerSetting], int], list[tuple[float, float, int]]]


@dataclass(frozen=True)
class GridSpec:
    """Which settings to profile.

    Attributes:
        layer_types: subset of :data:`~evaluators.latency.lut_table.LAYER_TYPES`.
        channels: channel counts (features for fc).
        fmaps: feature-map sizes (conv types).
        rates: compression rates of the pruned settings (dense is always added).
        block_sizes: (p, q) candidates of block schemes.
        max_channel_fmap: skip conv shapes with channels * fmap above this (real nets shrink
            the feature map as channels grow).
        schemes: layer type -> pruned schemes to profile.
    """

    layer_types: tuple[str, ...] = LAYER_TYPES
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    fmaps: tuple[int, ...] = (2, 4, 8, 16, 32)
    rates: tuple[float, ...] = (2.0, 3.0, 5.0, 10.0)
    block_sizes: tuple[tuple[int, int], ...] = ((4, 4), (8, 16))
    max_channel_fmap: int = 2048
    schemes: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("conv1x1", ("unstructured", "filter", "block_based")),
        ("conv3x3", ("unstructured", "filter", "pattern", "block_punched")),
        ("conv5x5", ("unstructured", "filter", "block_punched")),
        ("dw3x3", ()),
        ("fc", ("unstructured", "filter", "block_based")),
    )

    def settings(self) -> list[LayerSetting]:
        """Every setting of the grid, grouped by shape."""
        unknown = set(self.layer_types) - set(LAYER_TYPES)
        if unknown:
            raise InvalidConfig(f"unknown layer types {sorted(unknown)}; choose from {LAYER_TYPES}")
        schemes = dict(self.schemes)
        out = []
        for lt in self.layer_types:
            shapes = ([(c, 1) for c in self.channels] if lt == "fc" else
                      [(c, f) for f in self.fmaps for c in self.channels if c * f <= self.max_channel_fmap])
            for c, f in shapes:
                out.append(LayerSetting(lt, c, f))
                for scheme in schemes.get(lt, ()):
                    blocks = self.block_sizes if scheme in ("block_punched", "block_based") else (None,)
                    out += [LayerSetting(lt, c, f, scheme, r, b) for b in blocks for r in self.rates]
        return out


DEFAULT_GRID = GridSpec()
#: A small grid for tests and quick looks (about 2 minutes with the compiled backend).
QUICK_GRID = GridSpec(layer_types=("conv1x1", "conv3x3", "dw3x3", "fc"), channels=(16, 64),
                      fmaps=(4, 16), rates=(2.0, 5.0), block_sizes=((8, 16),))


class LocalRunner:
    """Measure settings on this machine (``compiled`` backend, or ``eager`` torch timing)."""

    def __init__(self, backend: str = "auto", threads: int = 1, rounds: int = 7) -> None:
        if backend == "auto":
            backend = "compiled" if _has_compiler() else "eager"
            if backend == "eager":
                warnings.warn("no C compiler: timing with torch eager (not the compiled kernels)",
                              stacklevel=2)
        self.backend, self.threads, self.rounds = backend, threads, rounds

    @property
    def version(self) -> str:
        return backend_version() if self.backend == "compiled" else f"torch-eager/{_torch_version()}"

    def __call__(self, settings: Sequence[LayerSetting], cascade: int) -> list[tuple[float, float, int]]:
        return measure_settings(settings, cascade=cascade, backend=self.backend,
                                threads=self.threads, rounds=self.rounds)


def build_lut(device: str, out: str | Path, grid: GridSpec = DEFAULT_GRID, *,
              runner: str | SettingRunner = "local", resume: bool = True, progress: bool = True,
              threads: int = 1, cascade: int = 10, backend: str = "auto",
              force: bool = False) -> LatencyTable:
    """Profile ``grid`` and write the table to ``out`` after every test model (atomically).

    Args:
        device: the device name recorded in (and checked against) the table.
        out: the table file; with ``resume`` an existing one is extended, finished settings skipped.
        grid: the settings to profile.
        runner: ``"local"`` or a callable such as ``RemoteRunner(url, token)`` (its ``version``
            attribute names the backend).
        resume: continue an existing ``out`` file instead of starting over.
        progress: show a tqdm progress bar.
        threads: threads used for measuring (pinned: torch and OpenMP).
        cascade: identical layers per setting in the test models (paper: 10).
        backend: local timing backend: ``compiled``, ``eager`` or ``auto``.
        force: resume a file made for another device/backend anyway.

    Returns:
        The table; ``table.machine["build"]`` holds settings, seconds and settings per minute.

    Raises:
        TableMismatch: ``out`` belongs to another device or backend (and not ``force``).
        CacheError: ``out`` exists but is unreadable.
    """
    pin_threads(threads)
    run = LocalRunner(backend, threads) if runner == "local" else runner
    if isinstance(run, str):
        raise InvalidConfig(f"runner must be 'local' or a callable, got {runner!r}")
    version = str(getattr(run, "version", "custom"))
    out = Path(out)
    if resume and out.exists():
        table = LatencyTable.load(out, device=device, backend=version, force=force)
    else:
        table = LatencyTable(device, version, machine_info(), cascade=cascade, threads=threads)
    todo = [s for s in grid.settings() if s not in table]
    start, done, failures = time.perf_counter(), 0, []
    bar = progress_bar(len(todo), progress)
    for group in setting_groups(todo):
        try:
            measured = run(group, table.cascade)
        except (BackendError, OSError, RuntimeError) as exc:
            failures.append(f"{group[0].layer_type} c{group[0].channels} f{group[0].fmap}: {exc}")
            bar.update(len(group))
            continue
        for setting, (ms, rel_iqr, runs) in zip(group, measured, strict=False):
            if ms > 0:
                table.add(TableEntry(setting, ms, rel_iqr, runs))
        done += len(group)
        seconds = time.perf_counter() - start
        table.machine["build"] = {"settings": done, "seconds": round(seconds, 2),
                                  "settings_per_min": round(60 * done / max(seconds, 1e-9), 1),
                                  "failures": failures}
        table.save(out)
        bar.update(len(group))
        bar.set_postfix(rate=f"{60 * done / max(seconds, 1e-9):.0f}/min")
    bar.close()
    if failures:
        warnings.warn(f"{len(failures)} test models failed: {failures[:3]}", stacklevel=2)
    return table


def progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar counting settings (disabled: a no-op bar)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="build-lut", unit="setting", disable=not enabled)


def _has_compiler() -> bool:
    try:
        from compiler_backend.toolchain import find_compiler

        find_compiler()
        return True
    except (ImportError, BackendError):
        return False


def _torch_version() -> str:
    import torch

    return torch.__version__


def machine_info() -> dict[str, Any]:
    """CPU, platform, Python and torch versions (recorded in tables)."""
    try:
        from benchmarks.machine import cpu_model

        cpu = cpu_model()
    except ImportError:
        cpu = platform.processor()
    return {"cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "torch": _torch_version()}


def add_build_lut_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``build-lut`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("build-lut", help="profile a latency lookup table for a device "
                              "(--model: a model-specific table, timed in context)")
    _add_arguments(p)
    p.set_defaults(func=run_build_lut)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, help="device name recorded in the table")
    p.add_argument("--out", required=True, type=Path, help="table file (JSON); resumed if present")
    p.add_argument("--grid", choices=("default", "quick"), default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", choices=("auto", "compiled", "eager"), default="auto")
    p.add_argument("--remote", metavar="URL", help="measure on a device server (`npas device-serve`)")
    p.add_argument("--token-env", default="NPAS_DEVICE_TOKEN", help="env var holding the server token")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--force", action="store_true", help="resume a table of another device/backend")
    m = p.add_argument_group("model-specific table (in-context per-layer times of one model)")
    m.add_argument("--model", help="zoo model name: time its own layers inside the compiled model")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--input-size", type=int, default=32, help="input height = width (3 channels)")
    m.add_argument("--rates", type=float, nargs="+", help="pruned rates to measure (default: all; "
                   "others are interpolated)")
    m.add_argument("--max-builds", type=int, help="stop after this many compiled models (resume later)")
    m.add_argument("--rounds", type=int, default=7, help="profiling rounds per compiled model")


def run_build_lut(args: argparse.Namespace) -> int:
    """Handler of ``npas build-lut``; prints a summary and returns the exit code."""
    import os

    if args.model:
        return _run_model_build(args)
    runner: str | SettingRunner = "local"
    if args.remote:
        from evaluators.latency.remote import RemoteRunner

        runner = RemoteRunner(args.remote, os.environ.get(args.token_env, ""), threads=args.threads)
    grid = QUICK_GRID if args.grid == "quick" else DEFAULT_GRID
    table = build_lut(args.device, args.out, grid, runner=runner, resume=not args.no_resume,
                      threads=args.threads, backend=args.backend, force=args.force)
    build = table.machine.get("build", {})
    print(f"{len(table)} settings in {args.out} ({build.get('settings_per_min', 0)} settings/min "
          f"this run); noise: {table.noise()}")
    return 0


def _run_model_build(args: argparse.Namespace) -> int:
    import warnings as _warnings

    import torch

    from evaluators.context import ModelContext
    from evaluators.latency.model_builder import build_model_lut, describe
    from npas_env.layers import extract_layers
    from npas_env.zoo import build_model

    if args.remote or args.backend == "eager":
        raise InvalidConfig("--model tables are measured locally with the compiled backend")
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        ctx = ModelContext(model, x, tuple(extract_layers(model, x)), name=args.model)
    table = build_model_lut(ctx, args.out, device=args.device, rates=args.rates, max_builds=args.max_builds,
                            resume=not args.no_resume, threads=args.threads, rounds=args.rounds,
                            force=args.force)
    print(f"{args.model}: {describe(table)} in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluators.latency.lut_builder --device NAME --out FILE``."""
    parser = argparse.ArgumentParser(prog="npas build-lut", description=(__doc__ or "").splitlines()[0])
    _add_arguments(parser)
    return run_build_lut(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
