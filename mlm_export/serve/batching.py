"""`Batcher`: dynamic batching on one inference worker thread.

Requests wait in one queue as `Job`s. The worker takes the oldest job and runs it together with the
queued jobs of the same key (same endpoint and parameters), up to `max_batch_size` texts; the task
classes then sort the texts of a run by length. While other requests are still being read by the HTTP
side, the oldest job waits for them, up to `max_wait_ms`; a lone request on an idle server runs at once.
One worker runs one session whose intra-op threads are the server's `--threads`: the cores are never oversubscribed by a
thread per request, and a run's cost is spread over all of them.

Fairness: a job is made of parts (a `/score` request: one part per text, since each text's masked copies
run alone anyway), and a job with parts left after a run goes back to the end of the queue, behind every
request that arrived meanwhile. A request for 1,000 PLL scores therefore delays a fill-mask request
queued behind it by one text's run, not by all of them.
A job whose client went away or timed out is cancelled: the worker drops its remaining parts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MlmExportError
from .metrics import Metrics


class Overloaded(MlmExportError):
    """The queue is full (`--max-queue`): answered 503 with Retry-After."""


class ShuttingDown(MlmExportError):
    """The server is draining and takes no new work: answered 503."""


@dataclass(eq=False)
class Job:
    """One request's work. `parts` run in order, possibly in several runs; `assemble` turns their results
    into the answer. `size` is the texts one part counts for in a run, `limit` the texts a run of this
    key may hold."""

    key: Hashable
    parts: Sequence[Any]
    assemble: Callable[[list[Any]], Any]
    size: int
    limit: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0  # parts handed to a run
    results: list[Any] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.parts)
        self._done = 0

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(value)

    def deliver(self, index: int, outcome: Any) -> None:
        """Record one part's outcome (called by the worker); the first error, or the last part, answers."""
        if self.cancelled:
            return
        if isinstance(outcome, BaseException):
            self.cancelled = True  # its other parts need not run
            self._answer(None, outcome)
            return
        self.results[index] = outcome
        self._done += 1
        if self._done == len(self.parts):
            try:
                answer = self.assemble(self.results)
            except Exception as exc:  # noqa: BLE001 - delivered to the request, which reports it
                self._answer(None, exc)
                return
            self._answer(answer, None)

    def _answer(self, value: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: a shutdown forced by a second Ctrl-C
            self.loop.call_soon_threadsafe(self._settle, value, error)


# runs one batch: the parts (all of one key), in order; returns one outcome per part, a value or an exception
Execute = Callable[[Hashable, list[Any]], list[Any]]


class Batcher:
    """The queue and its worker thread. `submit` is called from the event loop, the rest runs on the worker."""

    def __init__(self, execute: Execute, max_wait_ms: float, max_queue: int, metrics: Metrics) -> None:
        self.execute = execute
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0  # requests the HTTP side is reading, not yet submitted
        self._thread = threading.Thread(target=self._work, name="mlm-export-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Take no more jobs and drop those queued (once the server has drained, or been forced to stop, no request
        waits for them); waits for the run in progress: the process must not exit while ONNX Runtime runs."""
        with self._cond:
            self._closed = True
            for job in self._queue:  # by now every request was answered or cut: nobody reads these
                job.cancelled = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def arriving(self) -> None:
        """A request started arriving (its body is being read): a run about to start may wait for it."""
        with self._cond:
            self._arriving += 1
            self.metrics.arriving.set(self._arriving)

    def arrived(self) -> None:
        """The request announced by `arriving` was submitted, or will not be (it was refused)."""
        with self._cond:
            self._arriving -= 1
            self.metrics.arriving.set(self._arriving)
            self._cond.notify()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests are queued, the most this server holds "
                                 "(--max-queue); retry later")
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job whose answer nobody will read (timed out, or its client went away)."""
        with self._cond:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
                self.metrics.queue_depth.set(len(self._queue))
                self._cond.notify()

    # --- the worker ---

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed, and nothing left
                self._wait_for_company()
                key, items, later = self._take()
                self.metrics.queue_depth.set(len(self._queue))
            if items:
                self._run(key, items)
            if later:
                with self._cond:  # behind every job that arrived during the run
                    self._queue.extend(job for job in later if not job.cancelled)
                    self.metrics.queue_depth.set(len(self._queue))

    def _wait_for_company(self) -> None:
        """Let the oldest live job wait for others of its key to fill its run (lock held), but only while
        requests are still arriving, and for at most max_wait: a lone request on an idle server runs at
        once, and under load the queue fills while the previous run computes."""
        while self._queue and not self._closed:
            head = self._queue[0]
            if head.cancelled:
                self._queue.popleft()
                continue
            if head.limit <= head.size or self._arriving <= 0:
                return  # its run cannot hold more, or no one else is coming
            queued = sum((len(j.parts) - j.taken) * j.size for j in self._queue if j.key == head.key)
            remaining = head.enqueued + self.max_wait - time.monotonic()
            if queued >= head.limit or remaining <= 0:
                return
            self._cond.wait(remaining)  # woken by a new job, a cancelled one, or one that will not come

    def _take(self) -> tuple[Hashable, list[tuple[Job, int]], list[Job]]:
        """The next run: parts of the oldest live job, then of later jobs with its key, up to its limit; and the
        jobs with parts left, which leave the queue until the run ends (lock held)."""
        items: list[tuple[Job, int]] = []
        later: list[Job] = []
        head: Job | None = None
        used = 0
        for job in list(self._queue):
            if job.cancelled:
                self._queue.remove(job)
                continue
            if head is None:
                head = job
            elif job.key != head.key:
                continue
            before = job.taken
            while job.taken < len(job.parts) and (not items or used + job.size <= head.limit):
                items.append((job, job.taken))
                job.taken += 1
                used += job.size
            if job.taken == len(job.parts):
                self._queue.remove(job)
            elif job.taken > before:
                self._queue.remove(job)
                later.append(job)
            if used >= head.limit:
                break
        return (head.key if head is not None else None), items, later

    def _run(self, key: Hashable, items: list[tuple[Job, int]]) -> None:
        start = time.perf_counter()
        try:
            outcomes = self.execute(key, [job.parts[index] for job, index in items])
        except Exception as exc:  # noqa: BLE001 - every request of the run gets it
            outcomes = [exc] * len(items)
        self.metrics.inference.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(sum(job.size for job, _ in items))
        self.metrics.batch_requests.observe(len({id(job) for job, _ in items}))
        for (job, index), outcome in zip(items, outcomes):
            job.deliver(index, outcome)
