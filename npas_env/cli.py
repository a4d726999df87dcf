"""The ``npas`` command line (also ``python -m npas_env``).

Each subcommand lives in the module that owns the work; this file only mounts them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from npas_env.errors import NpasError

Mount = Callable[[argparse._SubParsersAction], None]


def _mounts() -> list[Mount]:
    from npas_env.commands import demo, evaluate

    mounts: list[Mount] = [demo.add_parser, evaluate.add_parser]
    for module, attr in _OPTIONAL:
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # not built yet
            raise
        mounts.append(getattr(mod, attr))
    return mounts


# Subcommands owned by other modules: (module, function that adds the sub-parser).
_OPTIONAL: list[tuple[str, str]] = [
    ("npas_env.commands.search", "add_parser"),
    ("npas_env.commands.compile", "add_parser"),
    ("npas_env.bench", "add_bench_parser"),
    ("evaluators.latency.lut_builder", "add_build_lut_parser"),
    ("npas_env.device_server", "add_device_serve_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npas", description="Compiler-aware pruning and "
                                     "architecture search (NPAS) on PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mount in _mounts():
        mount(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; package errors print one clear line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or args.func
        return int(handler(args) or 0)
    except NpasError as exc:
        print(f"npas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npas {args.command}: interrupted; completed work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
