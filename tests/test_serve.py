"""`mlm-export serve`, started on loopback as a user starts it and sent real HTTP requests: answers equal to the
library's, every bad request a 4xx in TEI's error shape, back-pressure, timeouts, and the drain on SIGTERM.
The batcher's fairness is tested on its own, where the order of runs can be asserted exactly."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

START = "from mlm_export.cli import main; main()"
STARTUP_SECONDS = 180  # loading and checking the graphs, on a busy machine


class Server:
    """`mlm-export serve ARTIFACT --port 0 ...` in a subprocess; its URL read from the line it prints when ready."""

    def __init__(self, artifact: Path, *options: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", START, "serve", str(artifact), "--port", "0", *options],
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + STARTUP_SECONDS
        self.stderr: list[str] = []
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            self.stderr.append(line)
            found = re.search(r" at http://127\.0\.0\.1:(\d+)$", line.strip())
            if found:
                self.port = int(found.group(1))
                return
            if not line:
                raise AssertionError(f"the server exited before it was ready: {''.join(self.stderr)}")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put("")

    def request(self, method: str, path: str, body: Any = None, raw: bytes | Iterator[bytes] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data, headers=headers or {}, encode_chunked=not isinstance(
                data, (bytes, type(None))))
            response = connection.getresponse()
            payload = response.read()
            kind = response.getheader("content-type", "")
            value = json.loads(payload) if kind.startswith("application/json") else payload.decode()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, value
        finally:
            connection.close()

    def gauge(self, name: str, **labels: str) -> float:
        return metric(self.request("GET", "/metrics")[2], name, **labels)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, _, value = self.request("POST", path, body)
        return status, value

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=120)
        while True:
            line = self.lines.get(timeout=30)
            if not line:
                break
            self.stderr.append(line)
        return code, "".join(self.stderr)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def half_sent(server: Server) -> Iterator[tuple[socket.socket, bytes]]:
    """A client that sent its headers and half its body: while its body is being read, a run about to start
    waits for it (up to --max-wait-ms), which holds the requests of a test in the queue. Yields the socket and
    the rest of its body."""
    body = json.dumps({"inputs": "the [MASK] sat"}).encode()
    client = socket.create_connection(("127.0.0.1", server.port))
    try:
        client.sendall(b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5]))
        _until(lambda: server.gauge("mlm_export_requests_reading") == 1)
        yield client, body[5:]
    finally:
        client.close()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 where absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def tiny_server(tiny_artifact: Path) -> Iterator[Server]:
    with Server(tiny_artifact, "--max-body-bytes", "4096", "--max-inputs", "8") as server:
        yield server


# --- answers ---

def test_fill_mask_and_score_answer_as_the_library_does(antiberty_export: Any) -> None:
    """Hidden-check style: each request's JSON equals what OnnxMaskFiller returns for the same call, nesting
    included, with the variant and provider in the headers; /score and /variants equal the library's."""
    from mlm_export import OnnxMaskFiller

    artifact = antiberty_export.path
    filler = OnnxMaskFiller.from_pretrained(artifact)
    chain = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKG"
    calls: list[tuple[Any, dict[str, Any]]] = [
        (chain[:20] + "[MASK]" + chain[21:], {}),
        ([chain[:30] + "[MASK]" + chain[31:]], {"top_k": 3}),  # a one-element list: that text's result
        ([chain[:10] + "[MASK]", chain[:40] + "[MASK]" + chain[41:], "[MASK]" + chain[1:]], {"top_k": 2}),
        (chain[:5] + "[MASK]" + chain[6:25] + "[MASK]" + chain[26:], {"top_k": 4}),  # two masks: a list per mask
        (chain[:20] + "[MASK]" + chain[21:], {"targets": ["C", "S", "W"], "top_k": 2}),
        (chain[:20] + "[MASK]" + chain[21:], {"top_k": 1000}),  # above the vocabulary: all of it, ranked
    ]
    with Server(artifact) as server:
        for inputs, parameters in calls:
            status, headers, answer = server.request("POST", "/fill-mask", {"inputs": inputs, "parameters": parameters})
            assert status == 200, answer
            assert answer == json.loads(json.dumps(filler(inputs, **parameters)))
            assert (headers["x-mlm-export-variant"], headers["x-mlm-export-provider"]) == (filler.variant,
                                                                                          filler.provider)
        status, rows = server.post("/score", {"inputs": [chain, chain[:30]], "parameters": {"per_token": True}})
        assert status == 200 and rows == [row.to_dict() for row in filler.score([chain, chain[:30]], per_token=True)]
        status, row = server.post("/score", {"inputs": chain, "parameters": {"reduction": "mean"}})
        assert status == 200 and row == filler.score(chain, reduction="mean").to_dict()
        mutations = ["E1Q", "V2A:Q3E", "G8S", "Q3E:V2A"]  # the last is the second, written the other way round
        for method in ("masked-marginal", "wt-marginal", "pll-delta"):  # pll-delta: one PLL per turn of the worker
            status, scored = server.post("/variants", {"inputs": {"wild_type": chain, "mutations": mutations},
                                                       "parameters": {"method": method}})
            assert status == 200
            expected = filler.score_variants(chain, mutations, method=method)
            assert scored == [{"mutant": m, "score": s} for m, s in zip(mutations, expected)]
        status, error = server.post("/fill-mask", {"inputs": ["[MASK]" * 510] * 40, "parameters": {"top_k": 25}})
        assert status == 413 and "1601 MB" in error["error"]  # each candidate carries its filled-in text: refused
        status, error = server.post("/variants", {"inputs": {"wild_type": chain, "mutations": ["A1G"]}})
        assert status == 422 and "A1G" in error["error"]  # the wild type has E at 1: refused before it runs
        status, _, info = server.request("GET", "/info")
        assert info["tasks"] == {"fill-mask": {"variant": filler.variant, "provider": filler.provider}}
        assert info["endpoints"] == ["/fill-mask", "/score", "/variants"] and info["model_id"] == "antiberty"
        code, stderr = server.stop()
    assert code == 0, stderr


def test_embed_and_sparse_answer_in_tei_shapes(tiny_tasks: Path) -> None:
    from mlm_export import Embedder, SparseEncoder

    texts = ["the cat sat on the mat", "a big red dog ran"]
    with Server(tiny_tasks) as server:
        status, vectors = server.post("/embed", {"inputs": texts})
        assert status == 200
        expected = Embedder.from_pretrained(tiny_tasks).encode(texts)
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)  # TEI normalizes by default
        np.testing.assert_allclose(np.array(vectors), expected, rtol=1e-5, atol=1e-6)
        status, raw = server.post("/embed", {"inputs": texts[0], "normalize": False, "pooling": "cls"})
        assert status == 200 and len(raw) == 1  # TEI: a list of vectors, for a string too
        np.testing.assert_allclose(raw[0], Embedder.from_pretrained(tiny_tasks).encode(texts[0], pooling="cls"),
                                   rtol=1e-5, atol=1e-6)
        status, sparse = server.post("/embed_sparse", {"inputs": texts, "top_k": 5})
        assert status == 200
        for terms, want in zip(sparse, SparseEncoder.from_pretrained(tiny_tasks).encode(texts, top_k=5)):
            assert [t["index"] for t in terms] == want.indices.tolist()
            np.testing.assert_allclose([t["value"] for t in terms], want.values, rtol=1e-5)
        status, error = server.post("/fill-mask", {"inputs": "the [MASK] sat"})
        assert status == 404 and "no fill-mask graph" in error["error"] and error["error_type"] == "NotFound"
        status, error = server.post("/embed", {"inputs": ["the cat", ""]})
        assert status == 422 and error == {"error": "input 1 is empty", "error_type": "InputError"}
        assert server.stop()[0] == 0


# --- bad requests ---

@pytest.mark.parametrize(("path", "raw", "status", "needle"), [
    ("/fill-mask", b'{"inputs": "the [MASK]', 400, "not valid JSON"),
    ("/fill-mask", b"\xff\xfe", 400, "not valid JSON"),
    ("/fill-mask", b'{"inputs": NaN}', 400, "NaN is not JSON"),
    ("/fill-mask", b'["the [MASK]"]', 422, "must be a JSON object"),
    ("/fill-mask", b'{"text": "the [MASK]"}', 422, "unknown field 'text'"),
    ("/fill-mask", b'{"parameters": {}}', 422, 'no "inputs"'),
    ("/fill-mask", b'{"inputs": 5}', 422, "got a number"),
    ("/fill-mask", b'{"inputs": ["the [MASK]", 7]}', 422, "input 1 is a number"),
    ("/fill-mask", b'{"inputs": []}', 422, "empty list"),
    ("/fill-mask", b'{"inputs": "the cat sat"}', 422, "has no [MASK] token"),
    ("/fill-mask", b'{"inputs": ""}', 422, "input 0 is empty"),
    ("/fill-mask", json.dumps({"inputs": "the [MASK] " + "cat " * 80}).encode(), 422, "takes at most 64"),
    ("/fill-mask", b'{"inputs": "the [MASK]", "parameters": {"top_k": 0}}', 422, "top_k must be a positive"),
    ("/fill-mask", b'{"inputs": "the [MASK]", "parameters": {"top_k": "5"}}', 422, "top_k must be a positive"),
    ("/fill-mask", b'{"inputs": "the [MASK]", "parameters": {"topk": 5}}', 422, "unknown parameter 'topk'"),
    ("/fill-mask", b'{"inputs": "the [MASK]", "parameters": {"targets": []}}', 422, "targets must be"),
    ("/fill-mask", b'{"inputs": "the [MASK]", "parameters": []}', 422, "parameters must be an object"),
    ("/fill-mask", json.dumps({"inputs": ["the [MASK]"] * 9}).encode(), 413, "at most 8 per request"),
    ("/score", b'{"inputs": ["the cat", "the [MASK]"]}', 422, "input 1: the sequence holds the mask token"),
    ("/score", b'{"inputs": "the cat", "parameters": {"reduction": "max"}}', 422, "reduction must be one of"),
    ("/score", b'{"inputs": "the cat", "parameters": {"per_token": 1}}', 422, "per_token must be true or false"),
    ("/variants", b'{"inputs": {"wild_type": "the cat sat", "mutations": ["x9y"]}}', 422, ""),
    ("/variants", b'{"inputs": "the cat"}', 422, "inputs must be an object"),
    ("/embed", b'{"inputs": "the cat"}', 404, "no embed graph"),
    ("/nowhere", b"{}", 404, "no endpoint /nowhere"),
])
def test_bad_requests_are_4xx_in_tei_shape(tiny_server: Server, path: str, raw: bytes, status: int,
                                          needle: str) -> None:
    got, headers, error = tiny_server.request("POST", path, raw=raw, headers={"content-type": "application/json"})
    assert got == status, error
    assert set(error) == {"error", "error_type"} and needle in error["error"]
    assert error["error_type"] == {400: "InvalidJSON", 404: "NotFound", 413: "PayloadTooLarge",
                                   422: "InputError"}[status]


def test_oversized_bodies_get_413_and_the_server_goes_on(tiny_server: Server) -> None:
    """By Content-Length before the body is read, and while a chunked body streams in; the rest of the body
    is read and dropped, so the client sees the answer rather than a broken pipe."""
    status, _, error = tiny_server.request("POST", "/fill-mask", raw=b"x" * (8 * 1024 * 1024))
    assert status == 413 and error["error_type"] == "PayloadTooLarge" and "8388608 bytes" in error["error"]
    status, _, error = tiny_server.request("POST", "/fill-mask", raw=iter([b"y" * 1024] * 64))
    assert status == 413 and "over 4096 bytes" in error["error"]
    status, _, error = tiny_server.request("GET", "/fill-mask")
    assert status == 405 and error["error_type"] == "MethodNotAllowed"
    assert tiny_server.request("GET", "/health")[0] == 200
    assert tiny_server.post("/fill-mask", {"inputs": "the [MASK] sat"})[0] == 200


def test_metrics_count_requests_errors_and_batches(tiny_server: Server) -> None:
    before = tiny_server.request("GET", "/metrics")[2]
    for _ in range(3):
        assert tiny_server.post("/fill-mask", {"inputs": ["the [MASK] sat", "a [MASK]"]})[0] == 200
    assert tiny_server.post("/fill-mask", {"inputs": "no mask"})[0] == 422
    status, headers, text = tiny_server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    ok = {"endpoint": "/fill-mask", "status": "200"}
    assert metric(text, "mlm_export_requests_total", **ok) - metric(before, "mlm_export_requests_total", **ok) == 3
    bad = {"endpoint": "/fill-mask", "error_type": "InputError"}
    assert metric(text, "mlm_export_errors_total", **bad) - metric(before, "mlm_export_errors_total", **bad) == 1
    runs = metric(text, "mlm_export_batch_size_count") - metric(before, "mlm_export_batch_size_count")
    texts = metric(text, "mlm_export_batch_size_sum") - metric(before, "mlm_export_batch_size_sum")
    assert runs == 4 and texts == 7  # 3 runs of 2 texts, and the one refused
    assert metric(text, "mlm_export_queue_depth") == 0
    assert 'mlm_export_model_info{model="tiny"' in text or "mlm_export_model_info{" in text


# --- batching, back-pressure, timeouts ---

def test_concurrent_requests_share_runs_and_get_their_own_answers(tiny_artifact: Path) -> None:
    """Requests queued together run as one batch, and each gets exactly its own answer; a lone request on an
    idle server does not wait for company."""
    from mlm_export import OnnxMaskFiller

    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    texts = ["the [MASK] sat on the mat", "a [MASK]", ["the big [MASK] ran to the house", "[MASK] cat"], "red [MASK]"]
    with Server(tiny_artifact, "--max-batch-size", "5", "--max-wait-ms", "60000") as server:
        status, alone = server.post("/fill-mask", {"inputs": "the [MASK]"})  # at once, though the wait is long
        assert status == 200 and alone == json.loads(json.dumps(filler("the [MASK]")))
        answers: dict[int, Any] = {}
        with half_sent(server):  # the first request waits for the others; the run starts when 5 texts are in
            threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, server.post(
                "/fill-mask", {"inputs": texts[i], "parameters": {"top_k": 3}}))) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        for i, text in enumerate(texts):
            status, answer = answers[i]
            assert status == 200 and _close(answer, filler(text, top_k=3))
        metrics = server.request("GET", "/metrics")[2]
        assert metric(metrics, "mlm_export_batch_requests_count") == 2  # the lone request's run, and one ...
        assert metric(metrics, "mlm_export_batch_requests_sum") == 5    # ... of the four requests
        assert server.stop()[0] == 0


def test_a_full_queue_answers_503_with_retry_after(tiny_artifact: Path) -> None:
    with Server(tiny_artifact, "--max-queue", "1", "--max-wait-ms", "60000", "--timeout", "1") as server:
        with half_sent(server):
            first: list[Any] = []
            waiting = threading.Thread(target=lambda: first.append(server.post("/fill-mask",
                                                                              {"inputs": "the [MASK]"})))
            waiting.start()
            _until(lambda: server.gauge("mlm_export_queue_depth") == 1)
            status, headers, error = server.request("POST", "/fill-mask", {"inputs": "a [MASK]",
                                                                           "parameters": {"top_k": 2}})
            assert status == 503 and headers["retry-after"] == "1" and error["error_type"] == "Overloaded"
            waiting.join(timeout=120)
            status, error = first[0]  # it waited for company past --timeout: dropped, and told so
            assert status == 503 and error["error_type"] == "Timeout" and "--timeout" in error["error"]
        assert server.post("/fill-mask", {"inputs": "the [MASK]"})[0] == 200  # nothing arriving: it runs at once
        assert server.stop()[0] == 0


def test_a_client_that_goes_away_has_its_work_dropped(tiny_artifact: Path) -> None:
    with Server(tiny_artifact, "--max-wait-ms", "60000") as server:
        with half_sent(server) as (holder, _):
            body = json.dumps({"inputs": "the [MASK]"}).encode()
            with socket.create_connection(("127.0.0.1", server.port)) as client:
                client.sendall(b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                _until(lambda: server.gauge("mlm_export_queue_depth") == 1)
            _until(lambda: server.gauge("mlm_export_errors_total", endpoint="/fill-mask", error_type="ClientGone") == 1)
            assert server.gauge("mlm_export_queue_depth") == 0
            holder.close()  # gone mid-body: not a server error either
            _until(lambda: server.gauge("mlm_export_errors_total", endpoint="/fill-mask", error_type="ClientGone") == 2)
        assert server.gauge("mlm_export_requests_total", endpoint="/fill-mask", status="500") == 0
        assert server.stop()[0] == 0


# --- lifecycle ---

def test_sigterm_finishes_accepted_requests_then_exits_0(tiny_artifact: Path) -> None:
    """Three requests wait in the queue and a fourth is half-sent when SIGTERM arrives: /health turns 503,
    new connections are refused, all four are answered 200, and the process exits 0."""
    with Server(tiny_artifact, "--max-wait-ms", "60000", "--max-batch-size", "64") as server:
        answers: list[Any] = []
        with half_sent(server) as (holder, rest):
            threads = [threading.Thread(target=lambda: answers.append(server.post(
                "/fill-mask", {"inputs": "the [MASK] sat"}))) for _ in range(3)]
            for thread in threads:
                thread.start()
            _until(lambda: server.gauge("mlm_export_queue_depth") == 3)
            server.process.send_signal(signal.SIGTERM)
            _until(lambda: _refused(server.port))
            holder.sendall(rest)
            reply = holder.makefile("rb").readline()
            for thread in threads:
                thread.join(timeout=120)
        code, stderr = server.stop()
    assert reply.startswith(b"HTTP/1.1 200")
    assert [status for status, _ in answers] == [200, 200, 200]
    assert code == 0, stderr
    assert "SIGTERM: finishing 4 accepted request(s)" in stderr


def test_serve_usage_and_startup_errors(tiny_artifact: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-c", START, "serve"]
    done = subprocess.run([*run, str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("Error: ") and "is not a directory" in done.stderr
    done = subprocess.run([*run, str(tiny_artifact), "--max-batch-size", "0"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--max-batch-size" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*run, str(tiny_artifact), "--port", str(port), "--json"], capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert json.loads(done.stdout)["error"]["type"] == "ServeError"


# --- the batcher's fairness ---

def test_a_long_score_request_does_not_starve_later_requests() -> None:
    """A job of many parts runs one part per turn and goes to the back: a request queued behind it runs
    after one of its parts, not after all of them."""
    from mlm_export.serve.batching import Batcher, Job
    from mlm_export.serve.metrics import Metrics

    order: list[str] = []
    gate = threading.Event()

    def execute(key: Any, parts: list[str]) -> list[str]:
        gate.wait(timeout=60)  # hold the first run until everything is queued
        order.extend(parts)
        return parts

    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(execute, max_wait_ms=0, max_queue=10, metrics=Metrics())
        big = Job(("score",), [f"big{i}" for i in range(5)], list, 1, 1, loop.create_future(), loop)
        small = Job(("fill-mask", 5), ["small"], lambda r: r[0], 1, 8, loop.create_future(), loop)
        batcher.submit(big)
        batcher.start()
        batcher.submit(small)
        gate.set()
        answers = await asyncio.gather(big.future, small.future)
        batcher.close()
        return answers

    big_answer, small_answer = asyncio.run(main())
    assert big_answer == [f"big{i}" for i in range(5)] and small_answer == "small"
    assert order == ["big0", "small", "big1", "big2", "big3", "big4"]  # one part of the long job ran first


def _close(answer: Any, expected: Any) -> bool:
    """Same candidates in the same order, scores equal to float32 rounding (a run's padding may differ)."""
    if isinstance(expected, dict):
        return (answer.keys() == expected.keys() and abs(answer["score"] - expected["score"]) < 1e-5
                and all(answer[k] == expected[k] for k in expected if k != "score"))
    return len(answer) == len(expected) and all(_close(a, e) for a, e in zip(answer, expected))


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _until(condition: Any, seconds: float = 120) -> None:
    """Wait for a state the test brought about (a request queued, a socket closed): polls, bounded."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.05)


def test_the_dockerfile_installs_existing_extras_and_runs_a_valid_command() -> None:
    """deploy/serve.Dockerfile cannot be built here (no Docker): its pip extras must exist, its integrity check
    and CMD must parse as the CLI's options, and its grace period must fit under docker stop's 10 s."""
    import shlex
    import tomllib

    from mlm_export.cli import main

    root = Path(__file__).resolve().parents[1]
    text = (root / "deploy" / "serve.Dockerfile").read_text()
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    wanted = re.search(r'pip install --no-cache-dir "\./\[([a-z,]+)\]"', text)
    assert wanted is not None and set(wanted.group(1).split(",")) <= extras and "export" not in wanted.group(1)
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    check = shlex.split(re.search(r"^RUN (mlm-export verify .*)$", text, re.M).group(1))  # type: ignore[union-attr]
    for argv in (command, check):
        assert argv[0] == "mlm-export"
        context = main.commands[argv[1]].make_context(argv[1], argv[2:])
        if argv[1] == "serve":
            assert context.params["grace_period"] < 10 and context.params["host"] == "0.0.0.0"
        else:
            assert context.params["integrity"] is True
