"""Adaptive batching: concurrent requests to one model merged into one predict.

Work-conserving, as Triton's default: when the model has a free slot, whatever is queued runs one
event-loop iteration later, so the requests read in the same round of I/O merge (a lone request
never waits for company, only for that iteration: a few microseconds); while every slot is busy,
requests queue and the next batch takes as many as fit ``max_batch_size`` rows. Only requests with
the same input names, datatypes, trailing shapes, outputs and parameters merge. One bad request
fails alone: inputs are checked before queueing, and a merged batch whose predict fails is retried
request by request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.protocol.errors import InferenceError, Overloaded
from shipyard.runtimes.base import EXECUTION, Execution, Model, Tensors


@dataclass
class BatchPolicy:
    """How a model batches. ``max_batch_size`` <= 1 turns batching off."""

    max_batch_size: int = 64
    #: How long a request may wait for company while another batch of the model is running.
    max_latency_ms: float = 0.0
    #: Requests waiting per model before new ones get 503 with Retry-After.
    max_queue: int = 2048

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    outputs: list[str]
    parameters: dict[str, Any]
    rows: int
    key: Any
    future: asyncio.Future[Tensors]
    execution: Execution
    enqueued: int


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


class Batcher:
    """Queues requests for one model and runs them in merged batches."""

    def __init__(self, model: Model, policy: BatchPolicy) -> None:
        self.model = model
        self.policy = policy
        self.queue: deque[_Pending] = deque()
        self.running = 0
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None

    @property
    def slots(self) -> int:
        return max(1, self.model.max_concurrency)

    async def infer(self, inputs: Tensors, outputs: list[str] | None, parameters: dict[str, Any]) -> Tensors:
        """Queue one request and wait for its share of a batch's outputs."""
        model = self.model
        checked = model.validate(inputs)
        selected = model.select_outputs(outputs, parameters)
        rows = _rows(checked)
        if rows is None or rows > self.policy.max_batch_size:
            return await model.run(checked, selected, parameters)  # cannot merge: run as it is
        if len(self.queue) >= self.policy.max_queue:
            raise Overloaded(
                f"model '{model.name}' has {len(self.queue)} requests queued (the limit); retry shortly"
            )
        key = (
            tuple((name, array.dtype.str, array.shape[1:]) for name, array in checked.items()),
            tuple(selected),
            _freeze(parameters),
        )
        execution = EXECUTION.get(None) or Execution()
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(checked, selected, parameters, rows, key, future, execution, time.perf_counter_ns()))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._flush_handle is not None or not self.queue or self.running >= self.slots:
            return
        loop = asyncio.get_running_loop()
        wait = self.policy.max_latency_ms / 1000 if self.running else 0.0
        if wait > 0 and self._queued_rows() < self.policy.max_batch_size:
            oldest = self.queue[0].enqueued
            remaining = wait - (time.perf_counter_ns() - oldest) / 1e9
            if remaining > 0:
                self._flush_handle = loop.call_later(remaining, self._flush)
                return
        self._flush_handle = loop.call_soon(self._flush_next_tick)

    def _flush_next_tick(self) -> None:
        """Flush one loop iteration later: a request is decoded in the iteration after its bytes are
        read, so this lets the requests read together with the first one join its batch (no timer:
        a lone request waits one iteration, a few microseconds)."""
        self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _queued_rows(self) -> int:
        return sum(item.rows for item in self.queue)

    def _flush(self) -> None:
        self._flush_handle = None
        loop = asyncio.get_running_loop()
        while self.queue and self.running < self.slots:
            batch = self._take()
            self.running += 1
            loop.create_task(self._run(batch))

    def _take(self) -> list[_Pending]:
        """The oldest request and every later compatible one that fits, in arrival order."""
        first = self.queue.popleft()
        batch, rows, left = [first], first.rows, deque()
        while self.queue and rows < self.policy.max_batch_size:
            item = self.queue.popleft()
            if item.key == first.key and rows + item.rows <= self.policy.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                left.append(item)
        left.extend(self.queue)
        self.queue = left
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        EXECUTION.set(Execution())  # this task's own record: executor waits of the batch land here
        started = time.perf_counter_ns()
        try:
            if len(batch) == 1:
                await self._run_alone(batch[0], started)
            else:
                await self._run_merged(batch, started)
        finally:
            self.running -= 1
            self._schedule()

    async def _run_alone(self, item: _Pending, started: int) -> None:
        try:
            outputs = await self.model.run(item.inputs, item.outputs, item.parameters)
        except Exception as exc:
            _settle(item, exc=exc)
            return
        item.execution.queue_ns += started - item.enqueued + EXECUTION.get().queue_ns
        item.execution.batch_rows = item.rows
        _settle(item, outputs)

    async def _run_merged(self, batch: list[_Pending], started: int) -> None:
        first = batch[0]
        merged = {name: np.concatenate([item.inputs[name] for item in batch]) for name in first.inputs}
        total = sum(item.rows for item in batch)
        try:
            outputs = await self.model.run(merged, first.outputs, first.parameters)
            parts = _split(outputs, [item.rows for item in batch], total)
        except InferenceError:
            parts = None  # one request may be to blame: run each alone so only it fails
        if parts is None:
            for item in batch:
                await self._run_alone(item, started)
            return
        waited = EXECUTION.get().queue_ns
        for index, (item, part) in enumerate(zip(batch, parts)):
            item.execution.queue_ns += started - item.enqueued + waited
            item.execution.batch_rows = total
            item.execution.counted = index == 0
            _settle(item, part)


def _rows(tensors: Tensors) -> int | None:
    """The shared first dimension of every input, or None when they cannot be batched."""
    sizes = {array.shape[0] if array.ndim else None for array in tensors.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


def _split(outputs: Tensors, rows: list[int], total: int) -> list[Tensors] | None:
    """Each request's rows of every output; None when an output has no batch dimension."""
    if any(array.ndim == 0 or array.shape[0] != total for array in outputs.values()):
        return None
    parts: list[Tensors] = []
    start = 0
    for count in rows:  # views, as np.split gives, without its overhead of about 1 µs per piece
        stop = start + count
        parts.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return parts


def _settle(item: _Pending, outputs: Tensors | None = None, exc: BaseException | None = None) -> None:
    if item.future.done():  # the client went away
        return
    if exc is not None:
        item.future.set_exception(exc)
    else:
        item.future.set_result(outputs)  # type: ignore[arg-type]


def batcher_for(model: Model, defaults: BatchPolicy) -> Batcher | None:
    """A batcher when the model can batch: its package's ``max_batch_size`` / ``max_latency_ms``
    override the server's defaults; runtimes not known to be batch-safe batch only when asked."""
    config = model.source.options.get("config") or {}
    asked = "max_batch_size" in config
    policy = BatchPolicy(
        max_batch_size=int(config.get("max_batch_size", defaults.max_batch_size)),
        max_latency_ms=float(config.get("max_latency_ms", defaults.max_latency_ms)),
        max_queue=int(config.get("max_queue", defaults.max_queue)),
    )
    batch_dims = all(spec.shape and spec.shape[0] == -1 for spec in model.inputs)
    if not policy.enabled or not batch_dims or not (model.batchable or asked):
        return None
    return Batcher(model, policy)
