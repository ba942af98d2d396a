"""How many intra-op threads a session may take: `threads=`, `MLM_EXPORT_THREADS`, and the limits."""

from __future__ import annotations

import numbers
import os

from ..errors import InputError

THREADS_PER_CPU = 4  # the most intra-op threads accepted per logical CPU


def usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, where the kernel enforces one by affinity)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    return THREADS_PER_CPU * usable_cpus()


THREADS_ENV = "MLM_EXPORT_THREADS"


def default_threads() -> int | None:
    """`MLM_EXPORT_THREADS` when set, else None (ONNX Runtime's own choice, one thread per physical core):
    the cap for processes that share a machine, such as test workers or several services on one host."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise InputError(f"{THREADS_ENV} must be a whole number of threads, got {value!r}") from None
    try:
        check_threads(threads)
    except InputError as exc:
        raise InputError(f"{THREADS_ENV}: {exc}") from None
    return threads


def check_threads(threads: object) -> None:
    """ONNX Runtime starts one OS thread per intra-op thread: a huge count exhausts the machine."""
    if threads is None:
        return
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool):
        raise InputError(f"threads must be an integer or None, got {threads!r}")
    threads = int(threads)
    cpus = usable_cpus()
    limit = THREADS_PER_CPU * cpus
    if not 1 <= threads <= limit:
        why = ": more threads than cores only adds contention" if threads > limit else ""
        raise InputError(f"threads must be between 1 and {limit} ({THREADS_PER_CPU} x the {cpus} CPUs "
                         f"here), got {threads}{why}")
