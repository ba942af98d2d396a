"""Silence third-party loggers while ONNX Runtime's optimizer and quantizers run.

They log on the root logger and on their own INFO-level loggers (one line per node), which would
drown mlm-export's progress on stderr and ignore `--quiet`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_onnxruntime_tools() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
