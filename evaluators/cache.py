"""A persistent, multi-process-safe store of evaluation results (SQLite in WAL mode).

One row per (model weights, plan, evaluator, evaluator settings, package version): the key is the
SHA-256 of those parts (see :func:`cache_key`), the value the result's ``to_dict()`` JSON. Several
processes may read and write the same file at once: every write is one short transaction with
``INSERT OR IGNORE`` on the primary key (a duplicate can never appear; the first writer wins), and
``synchronous=FULL`` makes a result durable once :meth:`EvaluationCache.put` returns, even if the
process is killed right after. A process killed inside a write leaves none of it behind: WAL
frames without a commit record are invisible to every reader.

Sharing across processes (SB3 ``SubprocVecEnv`` workers, evaluator pools, several searches):

* open the same path in each process, or hand an ``EvaluationCache`` to the workers: it pickles
  as its path (``spawn`` / ``forkserver``), and a ``fork``-ed child opens its own connection on
  first use (the parent's is never used nor closed there, as SQLite requires);
* WAL mode lets readers go on while one process writes; writers queue on SQLite's lock with a
  busy timeout (``timeout_s``, 60 s), so a concurrent writer waits instead of failing with
  "database is locked";
* two processes evaluating the same new plan at once both store it; ``INSERT OR IGNORE`` keeps
  the first result, so each key has one row, and a result one process stored is a hit for all;
* the file must be on a local file system (WAL needs shared memory; not NFS).

A file that is not SQLite, or an SQLite database that is not an npas-env cache (foreign tables, or
another format version), raises :class:`~npas_env.errors.CacheError` and is never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npas_env.errors import CacheError

if TYPE_CHECKING:  # kept out of runtime imports: opening a cache must not need torch
    from evaluators.context import ModelContext
    from npas_env.plan import PruningPlan

CACHE_FORMAT = "npas-eval-cache"
CACHE_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = {"cache_meta", "results"}
#: Connections a forked child inherited (see ``EvaluationCache._leave_inherited``).
_INHERITED: list[sqlite3.Connection] = []
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
    "result TEXT NOT NULL, created REAL NOT NULL)",
)


def package_version() -> str:
    """The installed npas-env version (part of every key, so upgrades never reuse stale rows)."""
    try:
        import npas_env

        version = getattr(npas_env, "__version__", None)
        if version:
            return str(version)
    except ImportError:  # pragma: no cover - npas_env is this package
        pass
    try:
        return metadata.version("npas-env")
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_key(context: ModelContext, plan: PruningPlan, kind: str, name: str,
              config: Mapping[str, Any]) -> str:
    """SHA-256 hex key of one evaluation.

    Args:
        context: the model; its weights fingerprint, layer-structure fingerprint (which includes
            input sizes) and pattern-set size are hashed.
        plan: the plan (``plan.key()``).
        kind: ``"accuracy"`` or ``"latency"``.
        name: the evaluator's registered name.
        config: the evaluator's ``config()``; must be JSON-able.

    Raises:
        CacheError: ``config`` is not JSON-serializable.
    """
    try:
        cfg = json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"evaluator {name!r} config() is not JSON-able ({exc}); "
                         "return only str/int/float/bool/list/dict values") from None
    parts = [context.weights_fingerprint(), context.arch_fingerprint,
             context.search_space.num_patterns, plan.key(), kind, name, cfg, package_version()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    """Counters of one :class:`EvaluationCache` handle.

    Attributes:
        hits: lookups answered from the file (this handle only).
        misses: lookups not found (this handle only).
        entries: rows in the file (all processes).
    """

    hits: int
    misses: int
    entries: int


class EvaluationCache:
    """Results keyed by :func:`cache_key`, stored in an SQLite file shared by processes.

    Args:
        path: the database file; created (with parent directories) if missing.
        timeout_s: how long a writer waits for another process's lock (busy timeout).

    Raises:
        CacheError: the file is not SQLite, or is SQLite but not an npas-env cache of this format
            version. The file is left untouched.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self._hits = self._misses = 0
        self._lock = threading.Lock()
        _check_header(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pid, self._raw = os.getpid(), self._open()
        try:
            self._validate_or_create()
            self._enable_wal()
        except BaseException:
            self._raw.close()
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open evaluation cache {self.path}: {exc}") from None
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own; SQLite handles must not cross)."""
        if os.getpid() != self._pid:
            self._leave_inherited()
            self._raw = self._open()
        return self._raw

    def _leave_inherited(self) -> None:
        """In a forked child: park the parent's connection for good, never using or closing it.

        SQLite forbids carrying a connection across ``fork()``; closing the copy would also drop
        the POSIX locks this process holds on the file through its own connection.
        """
        _INHERITED.append(self._raw)
        self._pid, self._lock = os.getpid(), threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle as (path, timeout) so a cache can be handed to worker processes."""
        return {"path": self.path, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout_s=state["timeout_s"])  # type: ignore[misc]

    # -- opening -------------------------------------------------------------------------------
    def _tables(self) -> set[str]:
        try:
            rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path} is not a readable SQLite database ({exc}); "
                             "pass another path or delete the file") from None
        return {r[0] for r in rows if not r[0].startswith("sqlite_")}

    def _validate_or_create(self) -> None:
        tables = self._tables()
        if not tables:
            self._create()
            tables = self._tables()
        foreign = tables - _TABLES
        if foreign or tables != _TABLES:
            raise CacheError(f"{self.path} is an SQLite database but not an npas-env evaluation "
                             f"cache (tables: {sorted(tables)}); pass another path")
        meta = dict(self._conn.execute("SELECT name, value FROM cache_meta").fetchall())
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != str(CACHE_VERSION):
            raise CacheError(f"{self.path} is an evaluation cache of format {meta.get('format')!r} "
                             f"version {meta.get('version')!r}; this npas-env reads "
                             f"{CACHE_FORMAT!r} version {CACHE_VERSION}. Use a new path.")

    def _enable_wal(self) -> None:
        """Switch the file to WAL (persistent; a no-op when another process already did)."""
        deadline = time.monotonic() + self.timeout_s
        while self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise CacheError(f"cannot switch {self.path} to WAL mode: locked") from None
                time.sleep(0.05)

    def _create(self) -> None:
        """Create the schema in one transaction (another process may be doing the same)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._tables():
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
                self._conn.executemany("INSERT OR IGNORE INTO cache_meta VALUES (?, ?)",
                                       [("format", CACHE_FORMAT), ("version", str(CACHE_VERSION)),
                                        ("created", str(time.time()))])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    # -- reading and writing ---------------------------------------------------------------------
    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """Return ``(kind, result dict)`` stored under ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Look up several keys at once; missing keys are absent from the returned dict."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, kind, result FROM results WHERE key IN ({marks})", chunk).fetchall()
                for key, kind, text in rows:
                    found[key] = (kind, json.loads(text))
            self._hits += len(found)
            self._misses += len(unique) - len(found)
        return found

    def put(self, key: str, kind: str, result: Mapping[str, Any]) -> bool:
        """Store one result; durable when this returns. Returns False if the key already existed."""
        return self.put_many([(key, kind, result)]) == 1

    def put_many(self, items: Iterable[tuple[str, str, Mapping[str, Any]]]) -> int:
        """Store several results in one transaction; returns how many were new."""
        now = time.time()
        rows = [(key, kind, json.dumps(dict(result), sort_keys=True), now)
                for key, kind, result in items]
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                before = self._conn.total_changes
                self._conn.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)", rows)
                added = self._conn.total_changes - before
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return added

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def stats(self) -> CacheStats:
        """Hits and misses of this handle, and the number of rows in the file."""
        return CacheStats(self._hits, self._misses, len(self))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if os.getpid() != self._pid:  # a forked child that never used it: nothing of ours is open
            self._leave_inherited()
            self._raw = sqlite3.connect(":memory:")
        with self._lock:
            self._raw.close()

    def __enter__(self) -> EvaluationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EvaluationCache({str(self.path)!r})"


def _check_header(path: Path) -> None:
    """Refuse, without writing, a non-empty file that does not start with the SQLite magic."""
    if not path.exists():
        return
    if path.is_dir():
        raise CacheError(f"evaluation cache path {path} is a directory; pass a file path")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise CacheError(f"cannot read evaluation cache {path}: {exc}") from None
    if head and head != _SQLITE_MAGIC:
        raise CacheError(f"{path} exists and is not an SQLite database (corrupt or another kind "
                         "of file); it was left untouched. Pass another path or delete it.")
