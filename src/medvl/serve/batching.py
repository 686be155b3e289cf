"""An asyncio micro-batcher: many concurrent requests, one model forward pass.

A CPU/GPU forward on 16 inputs costs little more than on one, so under concurrency the server
collects requests for up to ``max_wait_ms`` (or until ``max_batch`` are waiting), runs the batch
function once in a worker thread (the event loop keeps accepting connections meanwhile) and
resolves each request's future with its own result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("medvl.serve")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class MicroBatcher(Generic[T, R]):
    """Batch calls of ``fn(list[item]) -> list[result]`` (same length, same order).

    The worker task is started lazily on the running loop and restarted if the loop changes
    (Starlette's TestClient runs each request on a fresh loop). One exception in ``fn`` fails
    every request of that batch, but not the next batch.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 16, max_wait_ms: float = 5.0,
                 name: str = "batch", on_batch: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self.on_batch = on_batch
        # One thread per batcher: forwards of one model never overlap (predictable memory), while
        # an image batch and a text batch may run side by side.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_worker(self) -> asyncio.Queue[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                   thread_name_prefix=f"medvl-{self.name}")
        if self._loop is not loop or self._task is None or self._task.done() or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name=f"medvl-{self.name}-batcher")
        return self._queue

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (exceptions of the batch are re-raised here)."""
        queue = self._ensure_worker()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(item, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        batch = [await queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            # Take what is already queued without waiting; only then wait for stragglers.
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            remaining = deadline - time.monotonic()
            if len(batch) >= self.max_batch or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, queue: asyncio.Queue[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        while True:
            batch = await self._collect(queue)
            live = [p for p in batch if not p.future.done()]  # a cancelled request needs no compute
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(executor, self.fn, [p.item for p in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: batch function returned {len(results)} results "
                                       f"for {len(live)} inputs")
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                log.exception("%s batch of %d failed", self.name, len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, r in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)

    async def aclose(self) -> None:
        """Stop the worker and its thread; a later :meth:`submit` starts fresh ones (an app may
        go through several lifespans, e.g. one per test client)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
