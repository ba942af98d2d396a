"""Keep stdout for results: while a command runs, everything else written there goes to stderr.

Third-party code prints to stdout at both levels: onnxruntime's optimizer with Python's `print`, torch's
exporter dumps its IR from C++. Under `--json`, stdout must hold exactly one JSON document, so the
command writes its result through the stream this yields, and file descriptor 1 points at stderr
until the block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
from collections.abc import Iterator
from typing import TextIO


def _fd(stream: object) -> int | None:
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # a test runner's buffer, or a closed stream


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)  # C libraries' buffered printf output, before fd 1 moves back


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Yield a stream to the real stdout; any other write to stdout goes to stderr meanwhile."""
    real = sys.stdout
    out_fd, err_fd = _fd(real), _fd(sys.stderr)
    if out_fd is None or err_fd is None:  # no descriptors to move: redirect Python's writes only
        with contextlib.redirect_stdout(sys.stderr):
            yield real
        return
    real.flush()
    saved = os.dup(out_fd)
    stream = os.fdopen(os.dup(saved), "w", encoding=getattr(real, "encoding", None) or "utf-8",
                       errors="backslashreplace")
    os.dup2(err_fd, out_fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield stream
    finally:
        # whatever is still buffered for stdout belongs to the chatter: let it out while fd 1 is stderr
        _flush_c_stdio()
        for pending in {id(s): s for s in (real, sys.__stdout__) if s is not None}.values():
            with contextlib.suppress(OSError, ValueError):
                pending.flush()
        with contextlib.suppress(OSError, ValueError):
            stream.close()  # flushes the results
        os.dup2(saved, out_fd)
        os.close(saved)
