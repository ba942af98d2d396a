"""Termination signals as exceptions, so every `finally` that removes a partial export gets to run.

Python turns SIGINT into KeyboardInterrupt; SIGTERM (what `docker stop`, systemd, Kubernetes and
`timeout` send) and SIGHUP kill the process outright unless a handler turns them into one too.
Only the command line installs these handlers: a library must not take over its host's signals.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import Interrupted

TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _restore(previous: Mapping[signal.Signals, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` in the main thread.

    A signal the parent chose to ignore stays ignored: `nohup` relies on SIGHUP being ignored.
    """
    if not _main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in TERMINATING
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so a cleanup or a rename is never cut short.

    A signal that arrived meanwhile is re-raised afterwards, to whatever handler was in place.
    """
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    watched = [s for s in (signal.SIGINT, *TERMINATING) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, lambda n, _f: pending.append(n)) for signum in watched}
    try:
        yield
    finally:
        _restore(previous)
        if pending:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def preserved_signal_handlers() -> Iterator[None]:
    """Put back, after the block, the handlers a library call replaced (`ray.init` installs its own SIGTERM
    handler): the host's choice of what a signal does stays the host's."""
    if not _main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *TERMINATING)}
    try:
        yield
    finally:
        _restore(previous)
