"""``remote`` latency against a real device server process on loopback, and its failure modes."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from evaluators.context import ModelContext
from evaluators.latency.lut_table import LayerSetting
from evaluators.latency.remote import RemoteError, RemoteLatency, RemoteRunner, post
from evaluators.registry import make_latency
from npas_env.device_server import MAGIC, WireError, decode_request, encode_request
from npas_env.layers import extract_layers
from npas_env.plan import LayerAction, PruningPlan
from npas_env.zoo import build_model

TOKEN = "test-token-123"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def server_url():
    env = {**os.environ, "NPAS_DEVICE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "npas_env.device_server", "--port", "0", "--backend",
                             "eager", "--max-bytes", "400000", "--read-timeout", "1",
                             "--request-timeout", "30"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            pytest.fail(f"server did not start: {line!r}")
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def zoo_context() -> ModelContext:
    torch.manual_seed(0)
    model = build_model("small_cnn", width=8).eval()
    x = torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = tuple(extract_layers(model, x))
    return ModelContext(model, x, layers, name="small_cnn")


def _plans(ctx: ModelContext) -> list[PruningPlan]:
    names = ctx.layer_names
    return [PruningPlan.dense(names, ctx.arch_fingerprint),
            PruningPlan(tuple(LayerAction("unstructured", 2.0) for _ in names), names, ctx.arch_fingerprint)]


def test_remote_correct_token_measures(server_url, zoo_context) -> None:
    remote = make_latency("remote", url=server_url, token=TOKEN, timeout_s=60,
                          model_kwargs={"width": 8}, rounds=2)
    results = remote.measure(zoo_context, _plans(zoo_context))
    assert len(results) == 2
    assert all(r.ok for r in results), [r.error for r in results]
    assert post(server_url, TOKEN, "/health", None, 10)["backend"] == "eager"


def test_remote_wrong_token_is_a_failure(server_url, zoo_context) -> None:
    remote = RemoteLatency(server_url, "wrong", model_kwargs={"width": 8})
    (result,) = remote.measure(zoo_context, _plans(zoo_context)[:1])
    assert not result.ok and "401" in result.error and "token" in result.error


def test_remote_server_down_is_a_failure(zoo_context) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = RemoteLatency(f"http://127.0.0.1:{port}", TOKEN, timeout_s=2, model_kwargs={"width": 8})
    (result,) = remote.measure(zoo_context, _plans(zoo_context)[:1])
    assert not result.ok and "cannot reach" in result.error


def test_remote_slow_server_times_out(zoo_context) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)   # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.perf_counter()
        (result,) = RemoteLatency(url, TOKEN, timeout_s=0.5, model_kwargs={"width": 8}).measure(
            zoo_context, _plans(zoo_context)[:1])
        assert not result.ok and "timeout" in result.error
        assert time.perf_counter() - start < 10
    finally:
        listener.close()


def test_remote_garbage_answer_is_a_failure(zoo_context) -> None:
    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\x00\xffnot json")

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        (result,) = RemoteLatency(url, TOKEN, timeout_s=5, model_kwargs={"width": 8}).measure(
            zoo_context, _plans(zoo_context)[:1])
        assert not result.ok and "garbage" in result.error
    finally:
        httpd.server_close()


def test_remote_oversized_request_is_a_failure(server_url) -> None:
    with pytest.raises(RemoteError, match="413"):
        post(server_url, TOKEN, "/measure", MAGIC + b"\x00" * 500_000, 10)


def test_remote_non_zoo_model_fails_without_network(context) -> None:
    (result,) = RemoteLatency("http://127.0.0.1:9", TOKEN).measure(
        context, [PruningPlan.dense(context.layer_names, context.arch_fingerprint)])
    assert not result.ok and "zoo" in result.error


def test_remote_runner_measures_layer_settings(server_url) -> None:
    runner = RemoteRunner(server_url, TOKEN, timeout_s=60, rounds=2)
    assert runner.version.startswith("torch-eager")
    rows = runner([LayerSetting("conv1x1", 16, 4), LayerSetting("conv1x1", 16, 4, "unstructured", 2.0)], 2)
    assert len(rows) == 2 and all(ms > 0 for ms, _, _ in rows)


def test_wire_format_round_trip_and_rejects_garbage() -> None:
    mask = torch.rand(3, 5) > 0.5
    body = encode_request({"a": 1}, {"w": ("state", torch.ones(2, 2).numpy()), "m": ("mask", mask.numpy())})
    manifest, tensors = decode_request(body)
    assert manifest["a"] == 1 and (tensors["m"][1] == mask.numpy()).all()
    for bad in (b"", b"junk", MAGIC + b"\xff\xff\xff\xff{}", MAGIC + b"\x00\x00\x00\x02[]"):
        with pytest.raises(WireError):
            decode_request(bad)


def test_server_survives_slow_clients_and_fuzz(server_url) -> None:
    host, port = server_url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=5)
    slow.sendall(b"POST /measure HTTP/1.1\r\n")          # then goes silent
    rng = random.Random(0)
    for i in range(40):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            if i % 2:
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
                s.sendall(junk)
            else:
                body = MAGIC + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
                s.sendall(b"POST /measure HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
                          + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                s.recv(4096)
    assert slow.recv(4096) == b""   # disconnected by the read timeout
    slow.close()
    assert post(server_url, TOKEN, "/health", None, 10)["ok"] is True
