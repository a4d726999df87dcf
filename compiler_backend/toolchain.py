"""Find the C compiler, compile a generated source to a shared object, cache it by hash."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from npas_env.errors import BackendError
from npas_env.io import atomic_write_text, cache_dir

#: Flags of the retry after a library failed verification (``compile.compile_model``). GCC
#: 12.2 at -O3 rewrote an address in the generic pooling loop (``simple_ops.emit_pool``) as an
#: offset from a null base; its pure-const analysis then took the loop for a null dereference,
#: found the function pure and deleted its call, so a 2x2 / stride-2 average pool wrote
#: nothing. ``-fno-delete-null-pointer-checks`` stops that reasoning, but costs MobileNetV2
#: at block 8x about 1.5 % (AVX-512 host, interleaved A/B), so it is not the default.
SAFETY_FLAGS = ("-fno-delete-null-pointer-checks",)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")


@dataclass(frozen=True)
class Artifact:
    """A compiled model library.

    Attributes:
        path: the cached ``.so``.
        cache_hit: it was found in the cache (no compile ran).
        compile_seconds: gcc wall time (0 on a hit).
    """

    path: Path
    cache_hit: bool
    compile_seconds: float


def find_compiler() -> str:
    """The C compiler: ``$CC`` if set, else ``gcc`` / ``cc`` on PATH.

    Raises:
        BackendError: none found (the message says how to install one).
    """
    cc = os.environ.get("CC")
    candidates = [cc] if cc else ["gcc", "cc"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise BackendError(
        f"no C compiler found (tried {', '.join(repr(c) for c in candidates)}). The compiled "
        "latency backend needs gcc with OpenMP: install it with `apt-get install gcc` "
        "(or point $CC at a working compiler).")


@lru_cache(maxsize=8)
def compiler_version(cc: str) -> str:
    """First line of ``cc --version`` (part of cache keys)."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise BackendError(f"cannot run C compiler {cc!r}: {exc}. Install gcc "
                           "(`apt-get install gcc`) or fix $CC.") from None
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else cc


def artifact_key(source: str, cc: str, extra: str = "") -> str:
    """Hash of everything that determines the binary: source, flags, compiler, generator."""
    from compiler_backend.codegen import GENERATOR_VERSION

    h = hashlib.sha256()
    for part in (source, " ".join(FLAGS), compiler_version(cc), GENERATOR_VERSION, extra):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def compile_source(source: str, line_map: list[tuple[int, int, str]], *,
                   cache: Path | None = None, safe: bool = False) -> Artifact:
    """Compile ``source`` into a cached shared object (atomic: temp file + rename); ``safe``
    adds ``SAFETY_FLAGS``.

    Raises:
        BackendError: no compiler, or gcc failed (the message names the failing layer).
    """
    cc = find_compiler()
    root = Path(cache) if cache is not None else cache_dir() / "compiler"
    root.mkdir(parents=True, exist_ok=True)
    extra_flags = SAFETY_FLAGS if safe else ()
    key = artifact_key(source, cc, " ".join(extra_flags))
    so_path = root / f"model_{key}.so"
    if so_path.exists():
        return Artifact(so_path, True, 0.0)
    c_path = root / f"model_{key}.c"
    atomic_write_text(c_path, source)
    fd, tmp = tempfile.mkstemp(prefix=f".model_{key}.", suffix=".so", dir=root)
    os.close(fd)
    start = time.perf_counter()
    try:
        proc = subprocess.run([cc, *FLAGS, *extra_flags, "-o", tmp, str(c_path), "-lm"],
                              capture_output=True, text=True, timeout=600)
    except OSError as exc:
        os.unlink(tmp)
        raise BackendError(f"cannot run C compiler {cc!r}: {exc}. Install gcc "
                           "(`apt-get install gcc`) or fix $CC.") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        os.unlink(tmp)
        raise BackendError(_describe_failure(proc.stderr, line_map, c_path))
    os.replace(tmp, so_path)
    return Artifact(so_path, False, seconds)


def _describe_failure(stderr: str, line_map: list[tuple[int, int, str]], c_path: Path) -> str:
    layers: list[str] = []
    first = ""
    for m in re.finditer(r":(\d+):\d+: error: (.*)", stderr):
        line = int(m.group(1))
        first = first or m.group(2)
        for lo, hi, name in line_map:
            if lo <= line < hi and name not in layers:
                layers.append(name)
    where = f"layer {', '.join(repr(n) for n in layers)}" if layers else "the model runtime"
    tail = "\n".join(stderr.strip().splitlines()[:8])
    return (f"C compilation failed in generated code for {where}: {first or 'see below'}. "
            f"Source kept at {c_path}.\n{tail}")
