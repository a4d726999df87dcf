"""A small latency server for a measuring device: ``npas device-serve`` / ``python -m npas_env.device_server``.

The client (``evaluators.latency.remote``) POSTs ``/measure`` with ``Authorization: Bearer TOKEN``
and a body of ``MAGIC + uint32 manifest length + manifest JSON + raw tensor bytes``; nothing is
ever unpickled. The manifest names a model the server can rebuild (a zoo model plus filter-type
surgery, or a cascade of layer settings), raw float32 weights and bit-packed masks. The server
compiles and times it and answers JSON: ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}`` with an HTTP error status.

Safety: listens on 127.0.0.1 unless told otherwise; token compared in constant time; request size
limit (checked before reading); slow-client read timeout; one measurement at a time with a
per-request time limit. Standard library only (plus the package itself).
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

MAGIC = b"NPASREQ1"
_DTYPES = {"float32": np.float32, "bool_packed": np.uint8}


class WireError(ValueError):
    """A request body is malformed (bad magic, manifest or tensor table)."""


def encode_request(manifest: dict[str, Any], tensors: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """Body bytes for ``manifest`` plus named tensors (``(kind, array)``; bool arrays are bit-packed)."""
    blobs, table, offset = [], [], 0
    for name, (kind, array) in tensors.items():
        if array.dtype == np.bool_:
            data, dtype = np.packbits(array.reshape(-1)).tobytes(), "bool_packed"
        else:
            data, dtype = np.ascontiguousarray(array, dtype="<f4").tobytes(), "float32"
        table.append({"name": name, "kind": kind, "dtype": dtype, "shape": list(array.shape),
                      "offset": offset, "nbytes": len(data)})
        blobs.append(data)
        offset += len(data)
    head = json.dumps({**manifest, "tensors": table}).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + b"".join(blobs)


def decode_request(body: bytes) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """Inverse of :func:`encode_request`; raises :class:`WireError` on any malformed part."""
    if len(body) < len(MAGIC) + 4 or not body.startswith(MAGIC):
        raise WireError("not an npas request (bad magic)")
    (size,) = struct.unpack(">I", body[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + size > len(body):
        raise WireError("truncated manifest")
    try:
        manifest = json.loads(body[start:start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors", []), list):
        raise WireError("manifest must be an object with a 'tensors' list")
    blob = memoryview(body)[start + size:]
    tensors = {}
    for t in manifest.get("tensors", []):
        try:
            shape = tuple(int(d) for d in t["shape"])
            off, n, dtype = int(t["offset"]), int(t["nbytes"]), t["dtype"]
            count = int(np.prod(shape)) if shape else 1
            if dtype not in _DTYPES or off < 0 or n < 0 or off + n > len(blob) or min(shape, default=1) < 0:
                raise WireError(f"bad tensor entry {t.get('name')!r}")
            raw = blob[off:off + n]
            if dtype == "bool_packed":
                packed = np.frombuffer(raw, dtype=np.uint8)
                array = np.unpackbits(packed, count=count).astype(bool).reshape(shape)
            else:
                array = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
            tensors[str(t["name"])] = (str(t.get("kind", "state")), array)
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"bad tensor entry: {exc}") from None
    return manifest, tensors


def run_request(manifest: dict[str, Any], tensors: dict[str, tuple[str, np.ndarray]],
                backend: str) -> dict[str, Any]:
    """Rebuild and time the requested model; returns the JSON-able result."""
    from evaluators.latency.lut_table import LayerSetting
    from evaluators.latency.profiling import measure_settings

    threads = int(manifest.get("threads", 1))
    rounds = max(1, min(int(manifest.get("rounds", 7)), 50))
    if "cascade" in manifest:
        spec = manifest["cascade"]
        settings = [LayerSetting(s["layer_type"], int(s["channels"]), int(s["fmap"]), s["scheme"],
                                 float(s["rate"]), tuple(s["block"]) if s.get("block") else None)
                    for s in spec["settings"]]
        rows = measure_settings(settings, cascade=int(spec.get("cascade", 10)), backend=backend,
                                threads=threads, rounds=rounds)
        return {"settings": [list(r) for r in rows]}
    return _run_model(manifest, tensors, backend, threads, rounds)


def _run_model(manifest: dict[str, Any], tensors: dict[str, tuple[str, np.ndarray]],
               backend: str, threads: int, rounds: int) -> dict[str, Any]:
    import torch

    from evaluators.latency.profiling import measure_model
    from npas_env.pruning.surgery import apply_filter_types
    from npas_env.zoo import build_model

    spec = manifest.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("zoo"), str):
        raise WireError("manifest 'model' must be {'zoo': name, 'kwargs': {...}}")
    kwargs: dict[str, Any] = {k: v for k, v in (spec.get("kwargs") or {}).items()
                              if isinstance(v, (int, float, str, bool))}  # build_model checks them
    torch.manual_seed(0)
    model = build_model(spec["zoo"], **kwargs)
    model = apply_filter_types(model, dict(manifest.get("filter_types") or {})).eval()
    state = {n: torch.from_numpy(a.copy()) for n, (k, a) in tensors.items() if k == "state"}
    if state:
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise WireError(f"weights {unexpected[:3]} do not belong to {spec['zoo']!r}")
    masks = {n: torch.from_numpy(a.copy()) for n, (k, a) in tensors.items() if k == "mask"}
    shape = [int(d) for d in manifest.get("input_shape", [])]
    timing = measure_model(model, torch.randn(*shape), masks, backend=backend, threads=threads,
                           rounds=rounds)
    return {"latency_ms": timing.latency_ms, "spread_ms": timing.spread_ms, "threads": threads,
            "backend": timing.backend}


class _Handler(BaseHTTPRequestHandler):
    server: DeviceServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # slow clients: socket timeout on every read (what a per-instance ``self.timeout`` would do;
        # the stdlib declares ``timeout`` a ClassVar)
        self.request.settimeout(self.server.read_timeout_s)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _authorized(self) -> bool:
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").encode()
        if hmac.compare_digest(given, self.server.token.encode()):
            return True
        self._reply(401, {"ok": False, "error": "wrong or missing token"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        if self.path != "/health":
            self._reply(404, {"ok": False, "error": f"no such endpoint {self.path!r}"})
            return
        self._reply(200, {"ok": True, "device": self.server.device, "backend": self.server.backend,
                          "version": self.server.version})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        if self.path != "/measure":
            self._reply(404, {"ok": False, "error": f"no such endpoint {self.path!r}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"ok": False, "error": "Content-Length required"})
            return
        if length < 0 or length > self.server.max_bytes:
            self._reply(413, {"ok": False, "error": f"request of {length} bytes exceeds the limit "
                                                    f"of {self.server.max_bytes} bytes"})
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._reply(400, {"ok": False, "error": "truncated body"})
            return
        status, payload = self.server.handle_measure(body)
        self._reply(status, payload)


class DeviceServer(ThreadingHTTPServer):
    """The HTTP server; see :func:`serve`."""

    daemon_threads = True

    def __init__(self, host: str, port: int, token: str, *, max_bytes: int, request_timeout_s: float,
                 read_timeout_s: float, backend: str, device: str, verbose: bool = False) -> None:
        if not token:
            raise ValueError("the device server needs a non-empty token")
        super().__init__((host, port), _Handler)
        from evaluators.latency.lut_builder import LocalRunner

        runner = LocalRunner(backend)
        self.token, self.max_bytes, self.device = token, max_bytes, device
        self.backend, self.version = runner.backend, runner.version
        self.request_timeout_s, self.read_timeout_s, self.verbose = request_timeout_s, read_timeout_s, verbose
        self._lock = threading.Lock()

    def handle_measure(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Decode, run with the time limit (one measurement at a time), return (status, JSON)."""
        try:
            manifest, tensors = decode_request(body)
        except WireError as exc:
            return 400, {"ok": False, "error": f"bad request: {exc}"}
        if not self._lock.acquire(timeout=self.request_timeout_s):
            return 503, {"ok": False, "error": "device busy (a previous measurement is still running)"}
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = run_request(manifest, tensors, self.backend)
            except Exception as exc:  # a failed measurement is an answer, not a crash
                box["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                self._lock.release()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(self.request_timeout_s)
        if worker.is_alive():
            return 504, {"ok": False, "error": f"measurement exceeded {self.request_timeout_s:g} s"}
        if "error" in box:
            return 422, {"ok": False, "error": box["error"]}
        return 200, {"ok": True, "result": box["result"]}


def serve(host: str = "127.0.0.1", port: int = 8765, token: str | None = None, *,
          max_bytes: int = 256 << 20, request_timeout_s: float = 300.0, read_timeout_s: float = 30.0,
          backend: str = "auto", device: str = "local", ready: Any = None) -> None:
    """Run the server until interrupted.

    Args:
        host: interface to bind (default loopback only; pass ``0.0.0.0`` deliberately).
        port: TCP port (0 = any free port; the chosen one is printed).
        token: shared secret (default: a random one, printed once).
        max_bytes: largest request body accepted.
        request_timeout_s: time limit of one measurement.
        read_timeout_s: a client that sends nothing for this long is disconnected.
        backend: ``compiled``, ``eager`` or ``auto``.
        device: name reported by ``/health``.
        ready: optional callable receiving the running server (tests, embedding).
    """
    token = token or secrets.token_urlsafe(24)
    server = DeviceServer(host, port, token, max_bytes=max_bytes, request_timeout_s=request_timeout_s,
                          read_timeout_s=read_timeout_s, backend=backend, device=device)
    host_, port_ = server.server_address[:2]
    print(f"npas device server listening on http://{host_}:{port_} (backend {server.backend})", flush=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def add_device_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``device-serve`` to an argparse ``subparsers`` object (handler in ``func``)."""
    p = subparsers.add_parser("device-serve", help="serve latency measurements over HTTP")
    _add_arguments(p)
    p.set_defaults(func=run_device_serve)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token-env", default="NPAS_DEVICE_TOKEN", help="env var holding the token")
    p.add_argument("--max-bytes", type=int, default=256 << 20)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--read-timeout", type=float, default=30.0)
    p.add_argument("--backend", choices=("auto", "compiled", "eager"), default="auto")
    p.add_argument("--device", default="local")


def run_device_serve(args: argparse.Namespace) -> int:
    """Handler of ``npas device-serve`` (the token comes from an env var, never argv)."""
    import os

    token = os.environ.get(args.token_env)
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"no ${args.token_env} set; generated token: {token}", flush=True)
    serve(args.host, args.port, token, max_bytes=args.max_bytes, request_timeout_s=args.request_timeout,
          read_timeout_s=args.read_timeout, backend=args.backend, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npas device-serve", description=(__doc__ or "").partition("\n")[0])
    _add_arguments(parser)
    return run_device_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
