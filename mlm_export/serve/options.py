"""`ServeOptions`: how `mlm-export serve` batches, bounds and drains; checked once, before anything loads."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ServeOptions:
    """The server's settings. Sizes count texts (a `/variants` request counts as one), times are seconds
    unless named `_ms`."""

    host: str = "127.0.0.1"
    port: int = 8080
    variant: str | None = None  # per task, the policy table's default where None
    providers: str = "auto"
    threads: int | None = None  # the inference session's intra-op threads (ONNX Runtime's default: one per core)
    max_batch_size: int = 32  # texts per graph run, gathered across requests
    max_wait_ms: float = 5.0  # how long the first queued request waits for others to join its run
    max_queue: int = 256  # requests waiting or running; one more is answered 503 with Retry-After
    max_body_bytes: int = 2 * 1024 * 1024  # a larger body is answered 413 before it is read
    max_inputs: int = 1024  # texts in one request (mutations in one /variants request)
    timeout: float = 60.0  # a request not answered by then is answered 503 and its remaining work dropped
    grace_period: float = 30.0  # after SIGTERM/SIGINT: how long accepted requests may take to finish

    def __post_init__(self) -> None:
        _whole("port", self.port, 0, 65535)
        _whole("max_batch_size", self.max_batch_size, 1, 4096)
        _whole("max_queue", self.max_queue, 1, 1_000_000)
        _whole("max_body_bytes", self.max_body_bytes, 1, 1 << 40)
        _whole("max_inputs", self.max_inputs, 1, 1_000_000)
        for name, low in (("max_wait_ms", 0.0), ("timeout", 0.001), ("grace_period", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not low <= float(value) < 1e7:
                raise ConfigError(f"{name} must be a number of {'milliseconds' if 'ms' in name else 'seconds'} "
                                  f">= {low:g}, got {value!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be an address such as 127.0.0.1, got {self.host!r}")


def _whole(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= int(value) <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
