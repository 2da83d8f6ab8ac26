"""Request batching: the instances of concurrent requests run as one model batch.

Each request's instances wait in a queue with a future. One worker task takes the first
waiting request, waits up to `wait_seconds` for more (unless `max_batch` instances are
already waiting), runs the batch in the model's worker thread (never on the event loop)
and hands each request its slice of the results. TF Serving's batching
(`max_batch_size`, `batch_timeout_micros`) works the same way. Requests are never split:
one with more than `max_batch` instances runs alone. `max_batch=1` runs every request
alone, without waiting. If a batch of several requests fails, each of them runs again
alone, so only a request that fails on its own gets the error.

Example:
    >>> batcher = Batcher(model_fn, max_batch=32, wait_seconds=0.005, executor=pool)
    >>> batcher.start()                       # in the event loop
    >>> await batcher.submit(["a fine film"])  # -> model_fn(["a fine film", ...])[0:1]
    >>> await batcher.close()                 # finishes what is queued
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class ShuttingDown(Exception):
    """A request arrived after `Batcher.close`."""


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future


class Batcher:
    """Collects instances from concurrent requests into batches for `run`.

    Args:
        run: items -> results (a sequence of the same length, sliceable, e.g. an array);
            called in `executor`.
        max_batch: int. Most instances per batch (a single larger request runs alone).
        wait_seconds: float. How long the first waiting request waits for company.
        executor: where `run` runs; one worker thread keeps the model single-threaded.
    """

    def __init__(self, run: Callable[[list], Sequence], max_batch: int, wait_seconds: float,
                 executor: Executor) -> None:
        self._run = run
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._executor = executor
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        self.batches = 0  # model runs and instances in them (the health endpoint shows them)
        self.instances = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, items: Sequence[Any]) -> Sequence:
        """The results for `items`, once the batch holding them has run."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(items, future))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Take no more requests; run the queued ones, then stop the worker."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    @property
    def waiting(self) -> int:
        """Instances queued for the next batch."""
        return sum(len(job.items) for job in self._queue)

    # --- the worker ---

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue or not self._closed:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = loop.time() + self.wait_seconds
            while not self._closed and self.waiting < self.max_batch \
                    and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            await self._run_batch(self._take())

    def _take(self) -> list[_Job]:
        """The first waiting request and those after it that fit in `max_batch`."""
        batch = [self._queue.popleft()]
        size = len(batch[0].items)
        while self._queue and size + len(self._queue[0].items) <= self.max_batch:
            batch.append(self._queue.popleft())
            size += len(batch[-1].items)
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if not job.future.done()]  # clients that went away
        if not batch:
            return
        try:
            results = await self._call([item for job in batch for item in job.items])
        except Exception as err:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(err)
                return
            # One request's instances must not fail the others: rerun each request alone,
            # so only the faulty one gets the error.
            log.warning("a batch of %d requests failed (%s: %s); running them one by one",
                        len(batch), type(err).__name__, err)
            for job in batch:
                await self._run_batch([job])
            return
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(results[start:start + len(job.items)])
            start += len(job.items)

    async def _call(self, items: list) -> Sequence:
        """`run(items)` in the executor, counted."""
        self.batches += 1
        self.instances += len(items)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run,
                                                                items)


__all__ = ["Batcher", "ShuttingDown"]
