"""`run_server`: load and check the artifact, bind the address, serve with uvicorn, and drain on SIGTERM/SIGINT.

Shutdown: on SIGTERM or SIGINT the listening socket closes (new connections are refused), idle
keep-alive connections close, `/health` and any request that still arrives on an open connection get
503, and every accepted request is finished. The process then exits 0. A request still unanswered when
the grace period is about to run out is answered 503 (Retry-After) and its queued work dropped, so none
is cut without an answer; the process then waits for the run in progress (ONNX Runtime cannot stop
mid-run), which a single very long `/score` text can stretch past the grace period. A second SIGINT
cuts what is left at once; the exit code is then 1 (`ServeError`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from ..errors import ServeError
from .app import ServerState, create_app
from .options import ServeOptions
from .service import Service

log = logging.getLogger("mlm_export")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when a shutdown signal arrives, so that it answers 503 from then on."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.app_state.draining:
            log.info("%s: finishing %d accepted request(s), then exiting (at most %g s)", signal.Signals(sig).name,
                     self.app_state.in_flight, self.app_state.options.grace_period)
            self.app_state.start_draining()
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a `ServeError` that says why not (in use, not an address here)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ServeError(f"cannot listen on {host}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                         + (" (another server holds it: pick another --port)" if exc.errno == errno.EADDRINUSE
                            else "")) from exc
    sock.set_inheritable(True)
    return sock


def run_server(directory: str | Path, options: ServeOptions, public_key: Any = None,
               on_ready: Callable[[str, Service], None] | None = None) -> None:
    """Serve the artifact until SIGTERM or SIGINT, then drain; returns once every accepted request was answered.
    `on_ready(url, service)` is called once the graphs are loaded and checked and the socket listens."""
    service = Service.load(directory, options, public_key)
    sock = bind(options.host, options.port)
    app = create_app(service, options)
    state: ServerState = app.state.server
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(options.grace_period + 0.999) if options.grace_period else 0)
    server = _Server(config, state)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if on_ready is not None:
        on_ready(url, service)
    with _signals_end_the_server():
        server.run(sockets=[sock])
    if state.expired:
        log.warning("the grace period (%g s) ran out: %d request(s) were answered 503 instead", options.grace_period,
                    state.expired)
    if state.cut:
        raise ServeError(f"the shutdown cut {state.cut} accepted request(s): a second SIGINT, or a run longer than "
                         f"the grace period ({options.grace_period:g} s; --grace-period)")
    if server.started is False and not server.should_exit:
        raise ServeError("the server stopped before it started; see the messages above")


@contextlib.contextmanager
def _signals_end_the_server() -> Iterator[None]:
    """uvicorn turns SIGINT and SIGTERM into a graceful shutdown and then re-raises them to the handlers it
    found; with these in place, that re-raise is a no-op and a drained server exits 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        sys.stderr.flush()
