"""The HTTP side of `mlm-export serve`: a Starlette app over one `Service` and its `Batcher`.

Errors follow text-embeddings-inference: `{"error": message, "error_type": type}`. A client's mistake is a
4xx, never a 500: malformed JSON 400, an input the library refuses 422 (its `InputError` message), a body
over `--max-body-bytes` or more than `--max-inputs` texts 413, an unknown endpoint 404; a full queue, a
request past `--timeout` and a server draining for shutdown are 503 with `Retry-After`. Every answer names
the variant and provider that computed it in `x-mlm-export-variant` and `x-mlm-export-provider` (every
successful answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InputError, MlmExportError
from .batching import Batcher, Job, Overloaded, ShuttingDown
from .metrics import Metrics
from .options import ServeOptions
from .requests import TooManyInputs, parse_embed, parse_fill_mask, parse_score, parse_sparse, parse_variants
from .service import Service

log = logging.getLogger("mlm_export")

RETRY_AFTER = "1"  # seconds: a batch run is milliseconds to seconds
BODY_SECONDS = 10  # a body not read by then is answered 408: a stalled upload must not hold runs or a shutdown
PARSERS: dict[str, Callable[[object, int], Any]] = {
    "/fill-mask": parse_fill_mask, "/score": parse_score, "/variants": parse_variants,
    "/embed": parse_embed, "/embed_sparse": parse_sparse}


class ClientError(MlmExportError):
    """A request the server refuses before it reaches the model: its status and TEI error type."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class ClientGone(Exception):
    """The client disconnected while its request waited: its work was dropped, nothing is sent."""


@dataclass
class ServerState:
    """What the handlers share: the service, the queue, the metrics, and whether the server is draining."""

    service: Service
    batcher: Batcher
    metrics: Metrics
    options: ServeOptions
    draining: bool = False
    in_flight: int = 0
    cut: int = 0  # requests cancelled by a shutdown past its grace period
    expired: int = 0  # requests answered 503 because the shutdown's grace period ran out first
    grace_over: asyncio.Event | None = None  # set when the shutdown's grace period is about to run out
    loop: asyncio.AbstractEventLoop | None = None

    def start_draining(self) -> None:
        """From a signal handler: answer 503 from now on, and give the accepted requests until just before
        uvicorn's own deadline (which would cut them) to finish."""
        if self.draining:
            return
        self.draining = True
        if self.loop is not None and self.grace_over is not None:
            margin = min(1.0, self.options.grace_period / 10)
            self.loop.call_soon_threadsafe(self.loop.call_later, max(0.0, self.options.grace_period - margin),
                                           self.grace_over.set)


def create_app(service: Service, options: ServeOptions, metrics: Metrics | None = None) -> Starlette:
    """The ASGI app serving `service`; its lifespan starts and stops the inference worker."""
    metrics = metrics or Metrics()
    for task, model in service.models.items():
        metrics.info.labels(service.artifact.manifest.name, task, model.variant, model.provider).set(1)
    batcher = Batcher(service.execute, options.max_wait_ms, options.max_queue, metrics)
    state = ServerState(service, batcher, metrics, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.grace_over = asyncio.Event()
        state.loop = asyncio.get_running_loop()
        batcher.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    routes = [Route(path, _inference(state, path), methods=["POST"]) for path in PARSERS]
    routes += [Route("/health", _health(state), methods=["GET"]), Route("/info", _info(state), methods=["GET"]),
               Route("/metrics", _metrics(state), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.server = state
    return app


def error_response(status: int, error_type: str, message: str, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER} if retry else None
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the TEI error shape."""
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    message = {404: f"no endpoint {request.url.path}; see GET /info for those served",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message, "error_type": kind}, status_code=exc.status_code, headers=exc.headers)


def _inference(state: ServerState, endpoint: str) -> Callable[[Request], Awaitable[Response]]:
    parse = PARSERS[endpoint]
    service, options = state.service, state.options

    async def handle(request: Request) -> Response:
        start = time.perf_counter()
        state.in_flight += 1
        response: Response | None = None
        error_type = ""
        try:
            response = await _answer(request)
        except (ClientGone, ClientDisconnect):
            response, error_type = Response(status_code=499), "ClientGone"  # nginx's "client closed request"
        except asyncio.CancelledError:
            state.cut += 1
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is an answer in the TEI shape
            status, error_type, message = _failure(exc, endpoint)
            response = error_response(status, error_type, message, retry=status == 503)
        finally:
            state.in_flight -= 1
            if response is not None:
                _count(state.metrics, endpoint, response.status_code, error_type, time.perf_counter() - start)
        return response

    async def _answer(request: Request) -> Response:
        if state.draining:
            raise ShuttingDown("the server is shutting down; send the request to another instance")
        why = service.serves(endpoint)
        if why is not None:
            raise ClientError(404, "NotFound", why)
        state.batcher.arriving()  # a run about to start may wait for this request
        try:
            try:
                body = await asyncio.wait_for(_read_body(request, options.max_body_bytes), BODY_SECONDS)
            except asyncio.TimeoutError:
                raise ClientError(408, "RequestTimeout", f"the body did not arrive within {BODY_SECONDS} s") from None
            try:
                data = json.loads(body, parse_constant=_not_json)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise ClientError(400, "InvalidJSON", f"the body is not valid JSON: {exc}") from None
            parsed = parse(data, options.max_inputs)
            work = service.work(parsed)
            loop = asyncio.get_running_loop()
            job = Job(work.key, work.parts, service.assemble(work, parsed), work.size, work.limit,
                      loop.create_future(), loop)
            state.batcher.submit(job)
        finally:
            state.batcher.arrived()
        result = await _wait(state, job, request)
        variant, provider = service.served_by(endpoint)
        return JSONResponse(result, headers={"x-mlm-export-variant": variant, "x-mlm-export-provider": provider})

    return handle


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`: by its Content-Length before any
    of it is read, else while it streams in. What the client still sends is read and dropped by the server."""
    length = request.headers.get("content-length")  # a malformed one never gets here: uvicorn answers it 400
    if length is not None and length.isdigit() and int(length) > limit:
        raise ClientError(413, "PayloadTooLarge", f"the body is {int(length)} bytes; this server takes at most "
                          f"{limit} (--max-body-bytes)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ClientError(413, "PayloadTooLarge", f"the body is over {limit} bytes, the most this server takes "
                              "(--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait(state: ServerState, job: Job, request: Request) -> Any:
    """The job's answer; its work is dropped when the client disconnects first or `--timeout` passes."""
    gone = asyncio.ensure_future(_disconnected(request))
    assert state.grace_over is not None
    grace_over = asyncio.ensure_future(state.grace_over.wait())
    try:
        done, _ = await asyncio.wait({job.future, gone, grace_over}, timeout=state.options.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        grace_over.cancel()
    if job.future in done:
        return job.future.result()
    state.batcher.cancel(job)
    if gone in done:
        raise ClientGone()
    if grace_over in done:
        state.expired += 1
        raise ClientError(503, "Unavailable", f"the server is shutting down and its grace period "
                          f"({state.options.grace_period:g} s, --grace-period) ran out before this request was "
                          "answered; retry on another instance")
    raise ClientError(503, "Timeout", f"the request was not answered within {state.options.timeout:g} s (--timeout); "
                      "its work was dropped. Retry, or split it")


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone: with the body read, ASGI's next message is the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _failure(exc: Exception, endpoint: str) -> tuple[int, str, str]:
    """An exception as (status, error type, message)."""
    if isinstance(exc, ClientError):
        return exc.status, exc.error_type, str(exc)
    if isinstance(exc, TooManyInputs):
        return 413, "PayloadTooLarge", str(exc)
    if isinstance(exc, InputError):
        return 422, "InputError", str(exc)
    if isinstance(exc, Overloaded):
        return 503, "Overloaded", str(exc)
    if isinstance(exc, ShuttingDown):
        return 503, "Unavailable", str(exc)
    if isinstance(exc, MlmExportError):  # the backend failed (ProviderError), a graph gave NaN (ArtifactError)
        log.error("%s failed: %s: %s", endpoint, type(exc).__name__, exc)
        return 500, type(exc).__name__, str(exc)
    log.exception("%s failed", endpoint, exc_info=exc)
    return 500, "InternalError", f"unexpected {type(exc).__name__}: {exc}. This is a bug in mlm-export"


def _count(metrics: Metrics, endpoint: str, status: int, error_type: str, seconds: float) -> None:
    metrics.requests.labels(endpoint, str(status)).inc()
    metrics.latency.labels(endpoint).observe(seconds)
    if status >= 400:
        metrics.errors.labels(endpoint, error_type).inc()


def _health(state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def health(request: Request) -> Response:
        if state.draining:
            return error_response(503, "Unavailable", "the server is shutting down", retry=True)
        return JSONResponse({"status": "ok"})
    return health


def _info(state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def info(request: Request) -> Response:
        return JSONResponse(state.service.info() | {"draining": state.draining, "queue_depth": state.batcher.depth})
    return info


def _metrics(state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
    return metrics
