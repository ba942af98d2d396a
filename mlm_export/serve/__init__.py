"""`mlm-export serve`: an HTTP server over one artifact, torch-free (the `serve` extra: Starlette, uvicorn,
prometheus_client).

    options.py   ServeOptions: batching, bounds, timeouts, the drain's grace period
    requests.py  the request bodies, read into typed requests (a bad one: 422)
    service.py   Service: the artifact's tasks loaded and checked, and how a run of requests executes
    batching.py  Batcher: the queue and the one inference worker (dynamic batching, fairness, cancellation)
    metrics.py   Metrics: Prometheus counters and histograms
    app.py       the Starlette app: endpoints, body limits, errors in text-embeddings-inference's shape
    server.py    run_server: bind, serve with uvicorn, drain on SIGTERM/SIGINT
"""

from __future__ import annotations

from .app import create_app
from .options import ServeOptions
from .server import run_server
from .service import Service

__all__ = ["ServeOptions", "Service", "create_app", "run_server"]
