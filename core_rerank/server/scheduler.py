"""Admission and back-pressure: scoring runs on worker threads, never on the event loop, behind a bounded FIFO queue.

A request first needs a *slot* (one per worker thread). When all slots are busy it waits in a FIFO queue of at
most ``max_queue`` requests; one more is refused at once (:class:`Overloaded`, a 429 with ``Retry-After``) instead
of waiting without bound. A waiting request leaves the queue when its client disconnects (:class:`Abandoned`) or
its deadline passes (:class:`TimedOut`), so nobody scores for a client that is gone. The queue is built from
asyncio futures on the event loop (no threads wait in it); only admitted work reaches the thread pool, whose
threads equal the slots, so nothing ever queues unseen inside the executor.

The unit of work is a plain callable, so a later batcher can take several waiting jobs that share a document
list and run them as one ``Reranker.rank_batch`` call under one slot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Abandoned", "Overloaded", "Scheduler", "TimedOut"]

T = TypeVar("T")


class Overloaded(Exception):
    """Every slot is busy and the queue is full; ``retry_after`` is a whole-second estimate of when to retry."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class TimedOut(Exception):
    """The request's deadline passed, while it waited (``stage="queue"``) or while it was scored (``"inference"``)."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


class Abandoned(Exception):
    """The client went away before the request's turn: it was taken out of the queue unscored."""


class Scheduler:
    """``await run(fn, ...)`` runs ``fn()`` on a worker thread once a slot is free, in arrival order.

    Args:
        slots: work running at once (worker threads).
        max_queue: requests that may wait for a slot; beyond them :class:`Overloaded` is raised at once.
        on_queue_time, on_run_time: called with the seconds each admitted request waited, and each run took.
    """

    def __init__(
        self,
        slots: int,
        max_queue: int,
        *,
        on_queue_time: Callable[[float], None] | None = None,
        on_run_time: Callable[[float], None] | None = None,
    ) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="core-rerank-worker")
        self._running = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._mean_run = 0.0  # moving average of run times, for Retry-After
        self._on_queue_time = on_queue_time or (lambda s: None)
        self._on_run_time = on_run_time or (lambda s: None)

    @property
    def waiting(self) -> int:
        """Requests in the queue now (the queue depth)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Slots in use now (including work whose request already timed out: the thread is still busy)."""
        return self._running

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one place: the waiting work's expected run time."""
        return max(1, math.ceil(self._mean_run * (len(self._waiting) + 1) / self.slots))

    async def run(
        self, fn: Callable[[], T], *, timeout: float | None = None, abandon: asyncio.Future | None = None
    ) -> T:
        """``fn()``'s result, run on a worker thread once this request's turn comes.

        ``timeout``: seconds from now to the answer (queue and run together): :class:`TimedOut` after. A run that
        times out cannot be stopped (it is a forward pass on a thread): its answer is dropped and its slot stays
        busy until it ends, so the queue never admits more work than there are threads. ``abandon``: a future
        that completes when the client has gone; while the request waits, that takes it out of the queue
        (:class:`Abandoned`).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = None if timeout is None else start + timeout
        await self._admit(deadline, abandon)
        self._on_queue_time(loop.time() - start)
        try:
            work = loop.run_in_executor(self._executor, _timed(fn))
        except BaseException:
            self._release()
            raise
        work.add_done_callback(self._finished)
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        # asyncio.wait never cancels what it waits for: a cancelled request leaves the work (and the callback
        # that frees its slot) running.
        done, _ = await asyncio.wait({work}, timeout=remaining)
        if not done:
            raise TimedOut("inference")
        result, _ = work.result()
        return result

    async def _admit(self, deadline: float | None, abandon: asyncio.Future | None) -> None:
        """Take a slot now, or wait for one in FIFO order; raise instead when the queue is full, the deadline
        passes or the client goes."""
        if self._running < self.slots and not self._waiting:
            self._running += 1
            return
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(self.retry_after())
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        watched: set[asyncio.Future] = {turn} if abandon is None else {turn, abandon}
        try:
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (server shutdown): give the place or the slot back
            self._leave(turn)
            raise
        if turn.done() and not (abandon is not None and abandon.done()):
            return  # our turn: release() handed us its slot
        self._leave(turn)
        if abandon is not None and abandon.done():
            raise Abandoned()
        raise TimedOut("queue")

    def _leave(self, turn: asyncio.Future[None]) -> None:
        """Take a request out of the queue; if its turn had come already, pass the slot on."""
        if turn.done() and not turn.cancelled():
            self._release()
            return
        turn.cancel()
        try:
            self._waiting.remove(turn)
        except ValueError:
            pass

    def _release(self) -> None:
        """A slot is free: hand it straight to the first waiting request, else count it free."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._running -= 1

    def _finished(self, work: asyncio.Future) -> None:
        if not work.cancelled() and work.exception() is None:
            seconds = work.result()[1]
            self._mean_run = seconds if self._mean_run == 0 else 0.8 * self._mean_run + 0.2 * seconds
            self._on_run_time(seconds)
        self._release()

    def close(self) -> None:
        """Stop taking work; work already running finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(fn: Callable[[], T]) -> Callable[[], tuple[T, float]]:
    def run() -> tuple[T, float]:
        start = time.perf_counter()
        return fn(), time.perf_counter() - start

    return run
