"""The BatchJob controller against a real Store and a stand-in engine (``shipyard.batch.run_batch`` replaced by
a function stepping through chunks when the test says so): status from progress, Succeeded/Failed, delete stops
a running job then discards its work and forgets it, a changed spec runs again, the queue bound, a job waiting for
its InferenceService, and a restarted plane requeueing a Running job that then resumes."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import shipyard.batch
from shipyard.batch import BatchProgress, BatchResult
from shipyard.control.controllers.batchjob import BatchJobController
from shipyard.control.resources import Resource
from shipyard.control.store import Store

API = "batch.shipyard.io/v1alpha1"


@dataclass
class Engine:
    """Runs ``chunks`` chunks of 10 rows, one each time ``step`` is released; remembers what it was asked."""

    chunks: int = 3
    fail: str | None = None
    step: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    specs: list[Any] = field(default_factory=list)
    discarded: list[Any] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)

    def run_batch(self, spec: Any, progress: Any = None, stop: threading.Event | None = None, log: Any = None) -> Any:
        self.specs.append(spec)
        start = self.done.get(spec.output, 0)
        if log is not None:
            log(f"plan: {self.chunks} chunks" + (f"; resuming: {start} of {self.chunks} chunks done" if start else ""))
        for chunk in range(start, self.chunks):
            while not self.step.acquire(timeout=0.02):
                if stop is not None and stop.is_set():
                    return BatchResult(chunk * 10, 0, 0.1, 0.0, spec.output, None, start, "Stopped",
                                       f"stopped after {chunk} of {self.chunks} chunks; run again to resume",
                                       chunks=chunk)
            self.done[spec.output] = chunk + 1
            if progress is not None:
                progress(BatchProgress((chunk + 1) * 10, self.chunks * 10, 0, chunk + 1, self.chunks, 100.0))
        if self.fail:
            return BatchResult(self.chunks * 10, 0, 0.3, 100.0, spec.output, None, start, "Failed", self.fail,
                               chunks=self.chunks)
        return BatchResult(self.chunks * 10, 1, 0.3, 100.0, spec.output, f"{spec.output}.errors.jsonl", start,
                           "Succeeded", "", written=self.chunks * 10 - 1, chunks=self.chunks)

    def discard(self, spec: Any) -> None:
        self.discarded.append(spec.output)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake = Engine()
    monkeypatch.setattr(shipyard.batch, "run_batch", fake.run_batch)
    monkeypatch.setattr(shipyard.batch, "discard", fake.discard)
    monkeypatch.delenv("SHIPYARD_BATCH_JOBS", raising=False)
    return fake


@pytest.fixture
def store(tmp_path: Path):
    opened = Store(tmp_path / "state.db")
    yield opened
    opened.close()


def apply(store: Store, name: str, **spec: Any) -> None:
    spec = {"model": "/models/m.joblib", "input": "/data/in.parquet", "output": f"/data/{name}.parquet", **spec}
    store.apply(Resource.from_document({"apiVersion": API, "kind": "BatchJob", "metadata": {"name": name},
                                       "spec": spec}))


def status(store: Store, name: str) -> dict[str, Any]:
    resource = store.get("BatchJob", "default", name)
    assert resource is not None, f"{name} is gone"
    return resource.status


async def until(controller: BatchJobController, check: Any, what: str, passes: int = 400) -> None:
    """Reconcile passes (letting the job threads run) until ``check()`` holds."""
    for _ in range(passes):
        await controller.reconcile_all()
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_a_job_runs_with_progress_to_succeeded(engine: Engine, store: Store, tmp_path: Path):
    async def scenario() -> None:
        controller = BatchJobController(store, tmp_path)
        apply(store, "one", carry=["id"], batchSize=10)
        await controller.reconcile_all()
        running = status(store, "one")
        assert running["phase"] == "Running" and running["conditions"][0]["reason"] == "Started"
        assert running["startTime"] and running["runs"] == 1
        engine.step.release()
        await until(controller, lambda: status(store, "one").get("rowsDone") == 10, "progress in status")
        assert status(store, "one")["chunksTotal"] == 3
        engine.step.release(2)
        await until(controller, lambda: status(store, "one")["phase"] == "Succeeded", "Succeeded")
        done = status(store, "one")
        assert (done["rowsDone"], done["rowsTotal"], done["errors"], done["chunksDone"]) == (30, 30, 1, 3)
        assert done["rowsWritten"] == 29
        assert done["errorsFile"] == "/data/one.parquet.errors.jsonl" and done["completionTime"]
        assert done["conditions"][0]["type"] == "Complete"
        assert engine.specs[0].carry == ["id"] and engine.specs[0].batch_size == 10
        for _ in range(3):  # finished: it does not run again
            await controller.reconcile_all()
        assert len(engine.specs) == 1
        log = controller.log_path("default", "one").read_text()
        assert "=== run 1 of BatchJob one" in log and "plan: 3 chunks" in log and "=== Succeeded: 30 rows" in log
        events = [event.reason for event in store.events("BatchJob", "default", "one")]
        assert {"Created", "Started", "Succeeded"} <= set(events)

    asyncio.run(scenario())


def test_a_failed_run_names_the_field(engine: Engine, store: Store, tmp_path: Path):
    async def scenario() -> None:
        engine.fail = "columns: no column 'x' in the input; it has: a, b"
        engine.chunks = 0
        controller = BatchJobController(store, tmp_path)
        apply(store, "bad")
        await until(controller, lambda: status(store, "bad").get("phase") == "Failed", "Failed")
        failed = status(store, "bad")
        assert failed["message"] == "spec.columns: no column 'x' in the input; it has: a, b"
        assert failed["conditions"][0]["reason"] == "BatchFailed"

    asyncio.run(scenario())


def test_delete_stops_a_running_job_discards_its_work_and_forgets_it(engine: Engine, store: Store, tmp_path: Path):
    async def scenario() -> None:
        controller = BatchJobController(store, tmp_path)
        apply(store, "doomed")
        engine.step.release()
        await until(controller, lambda: status(store, "doomed").get("rowsDone") == 10, "one chunk")
        store.mark_deleting("BatchJob", "default", "doomed")
        await until(controller, lambda: store.get("BatchJob", "default", "doomed") is None, "removed")
        assert engine.discarded == ["/data/doomed.parquet"] and engine.done["/data/doomed.parquet"] == 1
        assert not controller.log_path("default", "doomed").exists()
        # a job deleted before it ran (here: queued behind another) is discarded and forgotten too
        apply(store, "pending", model="some-service")
        await controller.reconcile_all()
        store.mark_deleting("BatchJob", "default", "pending")
        await until(controller, lambda: store.get("BatchJob", "default", "pending") is None, "removed")

    asyncio.run(scenario())


def test_a_changed_spec_stops_the_run_and_runs_the_new_one(engine: Engine, store: Store, tmp_path: Path):
    async def scenario() -> None:
        controller = BatchJobController(store, tmp_path)
        apply(store, "changing")
        engine.step.release()
        await until(controller, lambda: status(store, "changing").get("rowsDone") == 10, "one chunk")
        apply(store, "changing", output="/data/other.parquet")
        await until(controller, lambda: status(store, "changing").get("observedGeneration") == 2 and
                    status(store, "changing")["phase"] == "Running", "generation 2 running")
        engine.step.release(3)
        await until(controller, lambda: status(store, "changing")["phase"] == "Succeeded", "Succeeded")
        assert [spec.output for spec in engine.specs] == ["/data/changing.parquet", "/data/other.parquet"]
        assert status(store, "changing")["runs"] == 2

    asyncio.run(scenario())


def test_at_most_n_jobs_run_and_a_service_is_waited_for(engine: Engine, store: Store, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    async def scenario() -> None:
        monkeypatch.setenv("SHIPYARD_BATCH_JOBS", "1")
        controller = BatchJobController(store, tmp_path, gateway_url=lambda: "http://127.0.0.1:9999/")
        apply(store, "first")
        apply(store, "second")
        apply(store, "via-service", model="iris", modelName="iris-v2")
        await controller.reconcile_all()
        assert status(store, "first")["phase"] == "Running"
        assert status(store, "second")["conditions"][0]["reason"] == "Queued"
        waiting = status(store, "via-service")["conditions"][0]
        assert waiting["reason"] == "ServiceNotFound" and "InferenceService 'iris' does not exist" in waiting["message"]
        store.apply(Resource.from_document({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                            "metadata": {"name": "iris"}, "spec": {"predictor": {}}}))
        await controller.reconcile_all()
        assert status(store, "via-service")["conditions"][0]["reason"] == "ServiceNotReady"
        store.set_status("InferenceService", "default", "iris", {"conditions": [{"type": "Ready", "status": "True"}]})
        engine.step.release(3)
        await until(controller, lambda: status(store, "first")["phase"] == "Succeeded", "first done")
        await until(controller, lambda: len(engine.specs) == 2, "the next one started")
        engine.step.release(3)
        await until(controller, lambda: len(engine.specs) == 3, "the third one started")
        engine.step.release(3)
        await until(controller, lambda: all(status(store, name)["phase"] == "Succeeded"
                                            for name in ("first", "second", "via-service")), "all done")
        service = next(spec for spec in engine.specs if spec.model_name)
        assert (service.model, service.model_name) == ("http://127.0.0.1:9999", "iris-v2")

    asyncio.run(scenario())


def test_a_restarted_plane_requeues_a_running_job_and_it_resumes(engine: Engine, store: Store, tmp_path: Path):
    async def first_plane() -> None:
        controller = BatchJobController(store, tmp_path)
        apply(store, "long")
        engine.step.release()
        await until(controller, lambda: status(store, "long").get("rowsDone") == 10, "one chunk")
        await controller.shutdown()  # stopped: the job stays Running in the store

    async def second_plane() -> None:
        controller = BatchJobController(store, tmp_path)
        await controller.recover()
        requeued = status(store, "long")
        assert requeued["phase"] == "Pending" and requeued["conditions"][0]["reason"] == "Requeued"
        await controller.reconcile_all()
        assert status(store, "long")["conditions"][0]["reason"] == "Resumed"
        engine.step.release(2)
        await until(controller, lambda: status(store, "long")["phase"] == "Succeeded", "Succeeded")
        assert status(store, "long")["resumedChunks"] == 1 and status(store, "long")["runs"] == 2

    asyncio.run(first_plane())
    assert status(store, "long")["phase"] == "Running"
    asyncio.run(second_plane())
    events = [event.reason for event in store.events("BatchJob", "default", "long")]
    assert {"Requeued", "Resumed"} <= set(events)
