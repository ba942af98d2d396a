"""Progress of the long steps (export, verify, score, bench), so that no step runs silently.

Library code reports; the caller decides how it shows:

- `with stage("fusing model.onnx"):` logs the start line and, on success, "done in 12.3 s (...)":
  a log read afterwards shows where the minutes went;
- `with stage("comparing int8", total=n, unit="batch") as advance:` also moves a bar by `advance(k)`;
- bars are drawn only inside `live_bars(True)` and only when stderr is a terminal (tqdm's own test),
  with counts, rate and elapsed time. The CLI turns them off for `-q` and `--json`; a pipe or a
  file gets the plain log lines alone, with no carriage returns or escape codes.

A library caller sees the log lines through the `mlm_export` logger and no bars unless it asks.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .interrupts import deferred_signals

log = logging.getLogger("mlm_export")
_bars: ContextVar[bool] = ContextVar("mlm_export_live_bars", default=False)

Advance = Callable[[int], None]


@contextmanager
def live_bars(enabled: bool = True) -> Iterator[None]:
    """Draw bars for the stages run inside, if stderr is a terminal; log lines then print above them."""
    enabled = enabled and is_terminal(sys.stderr)
    token, handlers = _bars.set(enabled), list(log.handlers)
    if enabled:  # a line printed mid-bar would tear it: console handlers clear the bars, print, redraw them
        from tqdm import tqdm

        tqdm.get_lock()  # made now: tqdm makes it lazily, and a signal during that breaks it for good
        log.handlers = [_AboveBars(h) if type(h) is logging.StreamHandler and is_terminal(h.stream) else h
                        for h in handlers]
    try:
        yield
    finally:
        _bars.reset(token)
        log.handlers = handlers


@contextmanager
def stage(description: str, total: int | None = None, unit: str = "it", lines: bool = True,
          bar: bool = True) -> Iterator[Advance]:
    """Report one step: a start line, a live bar on a terminal, and its duration once it succeeds.

    `total=None` shows elapsed time only (a step with no natural count, such as fp16 conversion).
    `lines=False` leaves the log lines to the caller (a command that prints its own summary);
    `bar=False` draws none (the step prints its results to the same terminal).
    """
    from tqdm import tqdm

    if lines:
        log.info("%s", description)
    bar_format = None if total is not None or unit != "it" else "{desc}: {elapsed}"
    # a SIGTERM turned exception inside tqdm's constructor or close() leaves a half-made bar whose
    # finalizer prints a traceback: both are held until they are done
    with deferred_signals():
        meter = tqdm(total=total, desc=description, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                     bar_format=bar_format, disable=None if bar and _bars.get() else True)  # None: off unless a TTY
    start = time.perf_counter()
    ticking = threading.Event()
    if not meter.disable:  # tqdm redraws only on update(); the clock of a long step must move on its own
        threading.Thread(target=_tick, args=(meter, ticking), daemon=True).start()
    try:
        yield meter.update
    finally:
        ticking.set()
        with deferred_signals():
            meter.close()
    if lines:
        log.info("done in %.1f s (%s)", time.perf_counter() - start, description)


def _tick(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        bar.refresh()


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal (False for a closed stream or one without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


class _AboveBars(logging.StreamHandler):  # type: ignore[type-arg]
    """A console handler's twin that prints through `tqdm.write`, so open bars are cleared and redrawn.

    Unlike tqdm's own logging redirect it lets every exception through: a SIGTERM turned into an
    exception mid-line must end the command, not vanish into `handleError`. `nolock`: taking tqdm's
    lock here could be cut short by that same signal and leave the lock broken.
    """

    def __init__(self, original: logging.StreamHandler) -> None:  # type: ignore[type-arg]
        super().__init__(original.stream)
        self.setFormatter(original.formatter)
        self.setLevel(original.level)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=self.stream, nolock=True)
