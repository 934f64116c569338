"""Admission and back-pressure: scoring runs on worker threads, never on the event loop, behind a bounded FIFO queue.

A request first needs a *slot* (one per worker thread). When all slots are busy it waits in a FIFO queue of at
most ``max_queue`` requests; one more is refused at once (:class:`Overloaded`, a 429 with ``Retry-After``) instead
of waiting without bound. A waiting request leaves the queue when its client disconnects (:class:`Abandoned`) or
its deadline passes (:class:`TimedOut`), so nobody scores for a client that is gone. The queue is built from
asyncio futures on the event loop (no threads wait in it); only admitted work reaches the thread pool, whose
threads equal the slots, so nothing ever queues unseen inside the executor.

The unit of work is a plain callable. A request may also carry a batch *key* and an *item*: when a slot frees and
hands it to a waiting request with a key, that request takes along up to ``max_batch - 1`` other waiting requests
with an equal key (in arrival order), and one call of ``run_batch(items)`` on one worker thread answers them all,
each request still getting its own result or its own exception, and keeping its own deadline. The scheduler knows
only keys, items and callables; the server uses it to score requests that share a document list with one
``Reranker.rank_batch`` call. Batches form only from the queue: a request that finds a slot free runs at once, alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

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


RunBatch = Callable[[Sequence[Any]], Sequence[Any]]
"""``run_batch(items)``: one outcome per item, in order: its result, or an exception instance that is raised to that
item's request alone."""


@dataclass(eq=False)
class _Waiter:
    """A request in the queue: its turn (completed with ``None`` when it owns a slot, or with a :class:`_Batch` it
    rides in), and its batch key and item (``key=None``: never batched)."""

    turn: asyncio.Future
    key: Hashable | None = None
    item: Any = None
    abandon: asyncio.Future | None = None


@dataclass(eq=False)
class _Batch:
    """Several requests run as one ``run_batch`` call: ``work`` completes with ``(outcomes, seconds)``."""

    work: asyncio.Future
    index: dict[int, int] = field(default_factory=dict)  # id(waiter) -> its position in the outcomes


class Scheduler:
    """``await run(fn, ...)`` runs ``fn()`` on a worker thread once a slot is free, in arrival order.

    Args:
        slots: work running at once (worker threads).
        max_queue: requests that may wait for a slot; beyond them :class:`Overloaded` is raised at once.
        max_batch: most requests one run may answer (``1``: no batching).
        run_batch: answers several requests' items at once (see :data:`RunBatch`); without it nothing is batched.
        on_queue_time, on_run_time: called with the seconds each admitted request waited, and each run took.
        on_batch_size: called with the number of requests each run answered (1 for a request run alone).
    """

    def __init__(
        self,
        slots: int,
        max_queue: int,
        *,
        max_batch: int = 1,
        run_batch: RunBatch | None = None,
        on_queue_time: Callable[[float], None] | None = None,
        on_run_time: Callable[[float], None] | None = None,
        on_batch_size: Callable[[int], None] | None = None,
    ) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.max_batch = max_batch if run_batch is not None else 1
        self._run_batch = run_batch
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="core-rerank-worker")
        self._running = 0
        self._waiting: deque[_Waiter] = deque()
        self._mean_run = 0.0  # moving average of run times, for Retry-After
        self._on_queue_time = on_queue_time or (lambda s: None)
        self._on_run_time = on_run_time or (lambda s: None)
        self._on_batch_size = on_batch_size or (lambda n: None)

    @property
    def waiting(self) -> int:
        """Requests in the queue now (the queue depth)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Slots in use now (including work whose request already timed out: the thread is still busy)."""
        return self._running

    def _slot_free(self) -> bool:
        """Whether a request arriving now takes a slot at once (one is free and nobody waits before it)."""
        return self._running < self.slots and not self._waiting

    def shed(self) -> None:
        """Raise :class:`Overloaded` now if a request arriving now could not even wait: no slot free and the queue
        full. This is the admission rule ``run`` applies; a server also calls it before reading a request's body,
        so refusing costs next to nothing (no parsing or validation competing with the scoring thread for the CPU
        and the GIL)."""
        if not self._slot_free() and len(self._waiting) >= self.max_queue:
            raise Overloaded(self.retry_after())

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one place: the waiting work's expected run time."""
        return max(1, math.ceil(self._mean_run * (len(self._waiting) + 1) / self.slots))

    async def run(
        self,
        fn: Callable[[], T],
        *,
        timeout: float | None = None,
        abandon: asyncio.Future | None = None,
        key: Hashable | None = None,
        item: Any = None,
    ) -> T:
        """``fn()``'s result, run on a worker thread once this request's turn comes.

        ``timeout``: seconds from now to the answer (queue and run together): :class:`TimedOut` after. A run that
        times out cannot be stopped (it is a forward pass on a thread): its answer is dropped and its slot stays
        busy until it ends, so the queue never admits more work than there are threads. ``abandon``: a future
        that completes when the client has gone; while the request waits, that takes it out of the queue
        (:class:`Abandoned`). ``key`` and ``item``: a request waiting in the queue may be answered together
        with others of an equal ``key`` by ``run_batch([item, ...])``, its own outcome returned or raised here
        instead of ``fn()``'s (``key=None``: always ``fn()``).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = None if timeout is None else start + timeout
        me = _Waiter(loop.create_future(), key, item, abandon)
        batch = await self._admit(me, deadline, abandon)
        self._on_queue_time(loop.time() - start)
        if batch is None:  # this request holds a slot: it runs, alone or with the waiting requests of its key
            riders = self._riders(me)
            try:
                if riders:
                    items = [w.item for w in (me, *riders)]
                    work = loop.run_in_executor(self._executor, _timed(lambda: _outcomes(self._run_batch, items)))
                else:
                    work = loop.run_in_executor(self._executor, _timed(fn))
            except BaseException:
                for w in riders:  # they were taken out of the queue for this run: they fail with it
                    w.turn.set_exception(RuntimeError("the worker pool is shut down"))
                self._release()
                raise
            self._on_batch_size(1 + len(riders))
            work.add_done_callback(self._finished)
            if riders:
                batch = _Batch(work, {id(w): i for i, w in enumerate((me, *riders))})
                for w in riders:
                    w.turn.set_result(batch)
        else:
            work = batch.work
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        # asyncio.wait never cancels what it waits for: a cancelled request leaves the work (and the callback
        # that frees its slot) running.
        done, _ = await asyncio.wait({work}, timeout=remaining)
        if not done:
            raise TimedOut("inference")
        result, _ = work.result()
        if batch is None:
            return result
        outcome = result[batch.index[id(me)]]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _riders(self, me: _Waiter) -> list[_Waiter]:
        """Take out of the queue the waiting requests (first come first) that can run in one batch with ``me``."""
        if me.key is None or self.max_batch <= 1:
            return []
        riders = [
            w
            for w in self._waiting
            if w.key == me.key and not w.turn.done() and not (w.abandon is not None and w.abandon.done())
        ][: self.max_batch - 1]
        for w in riders:
            self._waiting.remove(w)
        return riders

    async def _admit(self, me: _Waiter, deadline: float | None, abandon: asyncio.Future | None) -> _Batch | None:
        """Take a slot now (``None``), or wait in FIFO order for one (``None``) or for a place in another
        request's batch (that :class:`_Batch`); raise instead when the queue is full, the deadline passes or the
        client goes."""
        if self._slot_free():
            self._running += 1
            return None
        self.shed()
        loop = asyncio.get_running_loop()
        self._waiting.append(me)
        turn = me.turn
        watched: set[asyncio.Future] = {turn} if abandon is None else {turn, abandon}
        try:
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (server shutdown): give the place or the slot back
            self._leave(me)
            raise
        if turn.done() and not (abandon is not None and abandon.done()):
            return turn.result()  # our turn: release() handed us its slot, or a batch took us along
        self._leave(me)
        if abandon is not None and abandon.done():
            raise Abandoned()
        raise TimedOut("queue")

    def _leave(self, me: _Waiter) -> None:
        """Take a request out of the queue; if its turn had come already, pass its slot on (a request taken into
        a batch holds no slot: the batch runs, and this request's answer is dropped)."""
        turn = me.turn
        if turn.done() and not turn.cancelled():
            if turn.exception() is None and turn.result() is None:
                self._release()
            return
        turn.cancel()
        try:
            self._waiting.remove(me)
        except ValueError:
            pass

    def _release(self) -> None:
        """A slot is free: hand it straight to the first waiting request, else count it free."""
        while self._waiting:
            turn = self._waiting.popleft().turn
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


def _outcomes(run_batch: RunBatch, items: list[Any]) -> list[Any]:
    """``run_batch(items)``, checked: one outcome per item; a failure of the whole call is every item's outcome."""
    try:
        outcomes = list(run_batch(items))
    except Exception as exc:
        return [exc] * len(items)
    if len(outcomes) != len(items):
        error = RuntimeError(f"run_batch gave {len(outcomes)} outcomes for {len(items)} items")
        return [error] * len(items)
    return outcomes


def _timed(fn: Callable[[], T]) -> Callable[[], tuple[T, float]]:
    def run() -> tuple[T, float]:
        start = time.perf_counter()
        return fn(), time.perf_counter() - start

    return run
