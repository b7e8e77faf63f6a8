"""The local engine with real ``shipyard serve`` processes: start, ready, adopt (and refusing strangers),
sweep leftovers, stop, and a replica that cannot start."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from shipyard.control.engines.base import EngineError, ReplicaSpec
from shipyard.control.engines.local import LocalEngine

pytestmark = pytest.mark.integration


def _spec(tmp_path: Path, model: Path, index: int = 0) -> ReplicaSpec:
    return ReplicaSpec("default", "iris", "iris-predictor-00001", index, [str(model), "--name", "iris"],
                       {"SHIPYARD_TEST_MARK": "engine"}, tmp_path / "logs" / f"iris-predictor-00001-{index}.log")


def _record(handle) -> dict:
    spec = handle.spec
    return {"namespace": spec.namespace, "isvc": spec.isvc, "revision": spec.revision, "index": spec.index,
            "pid": handle.pid, "http_url": handle.http_url, "grpc_address": handle.grpc_address,
            "log_path": str(spec.log_path)}


async def _until_ready(engine: LocalEngine, handle, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.05)):
        if await engine.ready(handle):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica not ready:\n{handle.spec.log_path.read_text()}")


def test_start_ready_adopt_sweep_and_stop(tmp_path, artifacts):
    async def scenario() -> None:
        engine = LocalEngine(tmp_path / "home")
        handle, other = await asyncio.gather(engine.start(_spec(tmp_path, artifacts["sk_logreg"])),
                                             engine.start(_spec(tmp_path, artifacts["sk_logreg"], index=1)))
        try:
            assert handle.http_url.startswith("http://127.0.0.1:") and handle.grpc_address.startswith("127.0.0.1:")
            await _until_ready(engine, handle)
            assert engine.alive(handle)
            answer = httpx.post(f"{handle.http_url}/v1/models/iris:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]})
            assert answer.json() == {"predictions": [1]}
            environ = Path(f"/proc/{handle.pid}/environ").read_bytes()
            assert b"SHIPYARD_TEST_MARK=engine" in environ  # the spec's environment reaches the replica
            assert os.getsid(handle.pid) == handle.pid  # its own session: it outlives the control plane
            log = handle.spec.log_path.read_text()
            assert "starting replica 0 of iris-predictor-00001" in log and "listening on" in log

            successor = LocalEngine(tmp_path / "home")  # a restarted control plane
            adopted = await successor.adopt(_record(handle))
            assert adopted is not None and (adopted.pid, adopted.state) == (handle.pid, "ready")
            assert successor.alive(adopted) and successor.exit_code(adopted) is None

            stranger = {**_record(handle), "pid": os.getpid()}  # a recorded pid now held by another process
            assert await successor.adopt(stranger) is None
            other_home = LocalEngine(tmp_path / "other-home")  # same pid, but not a replica of that home
            assert await other_home.adopt(_record(handle)) is None
            assert await other_home.sweep(set()) == []

            kept = {handle.spec.replica_id, other.spec.replica_id}
            assert await successor.sweep(kept) == []
            assert await successor.sweep({other.spec.replica_id}) == [handle.pid]  # not kept: stopped
            assert not successor.alive(adopted)
            for _ in range(200):  # the first engine reaps its child a moment after the successor stopped it
                if engine.exit_code(handle) is not None:
                    break
                await asyncio.sleep(0.05)
            assert engine.exit_code(handle) is not None and not engine.alive(handle)

            await _until_ready(engine, other)  # a plain stop: SIGTERM, the replica drains and exits
            await engine.stop(other, grace_s=10)
            assert other.state == "stopped" and not engine.alive(other)
            assert "Stopped." in other.spec.log_path.read_text()
        finally:
            await engine.stop(handle, grace_s=5)
            await engine.stop(other, grace_s=5)
            await engine.close()

    asyncio.run(scenario())


def test_a_replica_that_cannot_start_raises_with_its_log(tmp_path):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")

    async def scenario() -> None:
        engine = LocalEngine(tmp_path / "home")
        with pytest.raises(EngineError, match=r"exited with code 1 before listening:\n(.|\n)*notes.txt"):
            await engine.start(_spec(tmp_path, not_a_model))

    asyncio.run(scenario())


def test_a_cancelled_start_leaves_no_process(tmp_path, artifacts):
    async def scenario() -> int:
        engine = LocalEngine(tmp_path / "home")
        task = asyncio.ensure_future(engine.start(_spec(tmp_path, artifacts["sk_logreg"], index=3)))
        for _ in range(200):  # until the process exists
            await asyncio.sleep(0.02)
            if engine._children:
                break
        [pid] = engine._children
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    pid = asyncio.run(scenario())
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    assert state == "", f"pid {pid} is still there ({state})"
