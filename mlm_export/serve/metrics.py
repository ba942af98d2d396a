"""`Metrics`: what `GET /metrics` exposes, in Prometheus' text format (prometheus_client, on a registry of
the server's own, so two servers in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Requests by endpoint and status, errors by type, queue depth, batch sizes, latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlm_export_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("mlm_export_errors", "Requests answered with an error, by endpoint and error type",
                              ["endpoint", "error_type"], registry=self.registry)
        self.latency = Histogram("mlm_export_request_duration_seconds", "Time from a request's body read to its "
                                 "answer, by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("mlm_export_queue_depth", "Requests waiting for the inference worker",
                                 registry=self.registry)
        self.arriving = Gauge("mlm_export_requests_reading", "Requests whose body is being read (a run about to "
                              "start waits for them, up to --max-wait-ms)", registry=self.registry)
        self.batch_size = Histogram("mlm_export_batch_size", "Texts per inference run, across requests",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("mlm_export_batch_requests", "Requests sharing one inference run",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("mlm_export_inference_duration_seconds", "Time of one inference run",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.info = Gauge("mlm_export_model_info", "The model served: 1 per task, with its variant and provider",
                          ["model", "task", "variant", "provider"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
