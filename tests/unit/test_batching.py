"""Adaptive batching: merging, zero wait, isolation of bad requests, back-pressure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from shipyard.protocol.errors import InvalidInput, ModelFailed, Overloaded
from shipyard.runtimes.base import EXECUTION, Execution, Model, ModelSource, TensorSpec
from shipyard.server.batching import Batcher, BatchPolicy, batcher_for


class Doubler(Model):
    """Records every batch it predicts; rows holding -1 make it raise."""

    batchable = True

    def __init__(self, seconds: float = 0.0, config: dict | None = None) -> None:
        super().__init__(ModelSource("doubler", "python", Path("."), options={"config": config or {}}))
        self.inputs = [TensorSpec("x", "FP64", (-1, 2))]
        self.outputs = [TensorSpec("y", "FP64", (-1, 2)), TensorSpec("total", "FP64", (-1,))]
        self.default_outputs = ["y"]
        self.batches: list[int] = []
        self.seconds = seconds

    def predict(self, inputs, outputs, parameters):
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if (x == -1).any():
            raise ValueError("cannot double -1")
        if self.seconds:
            time.sleep(self.seconds)
        result = {"y": x * 2 * parameters.get("scale", 1), "total": x.sum(axis=1)}
        return {name: result[name] for name in outputs}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[value, value] for value in values], dtype=np.float64)}


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_merge_into_one_predict_and_split_back():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=64))
        answers = await asyncio.gather(*(batcher.infer(rows(i, i + 0.5), None, {}) for i in range(10)))
        return model, answers

    model, answers = run(scenario())
    assert model.batches == [20]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], rows(i, i + 0.5)["x"] * 2)


def test_a_lone_request_on_an_idle_model_runs_at_once():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=64, max_latency_ms=500))
        started = time.perf_counter()
        await batcher.infer(rows(1), None, {})
        return time.perf_counter() - started

    assert run(scenario()) < 0.25  # far below the 500 ms latency window


def test_max_batch_size_caps_rows_and_oversized_requests_run_alone():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=4))
        await asyncio.gather(*(batcher.infer(rows(i), None, {}) for i in range(10)), batcher.infer(rows(*range(6)), None, {}))
        return model.batches

    batches = run(scenario())
    assert sorted(batches) == [2, 4, 4, 6]


def test_requests_with_other_parameters_or_outputs_are_not_merged():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=64))
        results = await asyncio.gather(
            batcher.infer(rows(1), None, {"scale": 3}),
            batcher.infer(rows(2), None, {}),
            batcher.infer(rows(3), ["total"], {}),
            batcher.infer(rows(4), None, {}),
        )
        return model.batches, results

    batches, results = run(scenario())
    assert sorted(batches) == [1, 1, 2]
    np.testing.assert_array_equal(results[0]["y"], [[6, 6]])
    assert list(results[2]) == ["total"]


def test_a_bad_request_fails_alone():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=64))
        return await asyncio.gather(
            batcher.infer(rows(1), None, {}),
            batcher.infer({"x": np.ones((1, 3))}, None, {}),  # wrong shape: refused before queueing
            batcher.infer(rows(-1), None, {}),  # makes the merged predict fail
            batcher.infer(rows(2), None, {}),
            return_exceptions=True,
        )

    first, wrong_shape, poison, last = run(scenario())
    np.testing.assert_array_equal(first["y"], [[2, 2]])
    np.testing.assert_array_equal(last["y"], [[4, 4]])
    assert isinstance(wrong_shape, InvalidInput) and "expected shape [-1, 2]" in wrong_shape.message
    assert isinstance(poison, ModelFailed) and "cannot double -1" in poison.message


def test_requests_queue_while_the_model_is_busy_and_the_queue_is_bounded():
    async def scenario():
        model = Doubler(seconds=0.2)
        model.max_concurrency = 1
        batcher = Batcher(model, BatchPolicy(max_batch_size=64, max_queue=3))
        first = asyncio.ensure_future(batcher.infer(rows(0), None, {}))
        await asyncio.sleep(0.05)  # the first batch is running now
        queued = [asyncio.ensure_future(batcher.infer(rows(i), None, {})) for i in range(1, 4)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queued"):
            await batcher.infer(rows(9), None, {})
        await asyncio.gather(first, *queued)
        return model.batches

    assert run(scenario()) == [1, 3]  # the three that waited ran together


def test_execution_records_queue_time_and_batch_rows():
    async def scenario():
        model = Doubler()
        batcher = Batcher(model, BatchPolicy(max_batch_size=64))

        async def one(value):
            execution = Execution()
            EXECUTION.set(execution)
            await batcher.infer(rows(value), None, {})
            return execution

        return await asyncio.gather(*(one(i) for i in range(5)))

    executions = run(scenario())
    assert [e.batch_rows for e in executions] == [5] * 5
    assert sum(e.counted for e in executions) == 1
    assert all(e.queue_ns >= 0 for e in executions)


def test_batcher_for_follows_defaults_and_package_config():
    assert batcher_for(Doubler(), BatchPolicy(max_batch_size=32)).policy.max_batch_size == 32
    assert batcher_for(Doubler(), BatchPolicy(max_batch_size=1)) is None
    configured = batcher_for(Doubler(config={"max_batch_size": 8, "max_latency_ms": 2}), BatchPolicy())
    assert (configured.policy.max_batch_size, configured.policy.max_latency_ms) == (8, 2.0)
    unbatchable = Doubler()
    unbatchable.batchable = False
    assert batcher_for(unbatchable, BatchPolicy()) is None
    fixed = Doubler()
    fixed.inputs = [TensorSpec("x", "FP64", (4, 2))]
    assert batcher_for(fixed, BatchPolicy()) is None
