"""--workers N: one port served by N processes, with global statistics and repository state."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

ROW = [5.1, 3.5, 1.4, 0.2]
BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


async def burst(url: str, count: int) -> list[int]:
    async def one(_: int) -> int:  # a new connection each time, so the kernel spreads them over workers
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.post(f"{url}/v2/models/iris/infer", json=BODY)).status_code

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_workers_share_the_port_and_report_global_state(start_server, artifacts):
    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--workers", "2")
    assert "2 workers" in server.output
    assert len(children(server.process.pid)) == 2
    assert asyncio.run(burst(server.url, 60)) == [200] * 60
    # statistics are the sum over both workers, whichever answers
    for _ in range(4):
        stats = httpx.get(f"{server.url}/v2/models/iris/stats").json()["model_stats"][0]
        assert stats["inference_count"] == 60
    # each worker's own share (x-shipyard-local) adds up to the total
    counts = {httpx.get(f"{server.url}/v2/models/iris/stats", headers={"x-shipyard-local": "1"}).json()
              ["model_stats"][0]["inference_count"] for _ in range(30)}
    assert all(count <= 60 for count in counts)
    if len(counts) == 2:
        assert sum(counts) == 60
    # unload through one worker unloads everywhere
    assert httpx.post(f"{server.url}/v2/repository/models/iris/unload").status_code == 200
    assert set(asyncio.run(burst(server.url, 20))) == {503}
    rows = httpx.post(f"{server.url}/v2/repository/index").json()
    assert rows == [{"name": "iris", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert httpx.post(f"{server.url}/v2/repository/models/iris/load").status_code == 200
    assert set(asyncio.run(burst(server.url, 20))) == {200}


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(start_server, artifacts):
    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--workers", "2")
    before = children(server.process.pid)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = children(server.process.pid)
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and before[0] not in now
    assert "starting a new one" in server.output
    time.sleep(0.5)
    assert set(asyncio.run(burst(server.url, 20))) == {200}
    assert server.stop(signal.SIGTERM) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in now)
    assert "Stopped." in server.output


def test_grpc_calls_spread_over_the_workers_and_count_globally(start_server, artifacts):
    """Both workers listen on the gRPC port (SO_REUSEPORT); calls on many connections all succeed,
    and the statistics any worker reports count them all."""
    import grpc

    from shipyard.protocol.grpc_codec import decode_tensors
    from shipyard.protocol.proto import inference_pb2 as pb
    from shipyard.protocol.proto.service import Stub

    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--workers", "2")
    assert server.grpc_address
    request = pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=ROW))])

    async def calls() -> list[int]:
        async def one_connection() -> list[int]:
            async with grpc.aio.insecure_channel(server.grpc_address) as channel:
                stub = Stub(channel)
                answers = await asyncio.gather(*(stub.ModelInfer(request) for _ in range(5)))
                return [int(decode_tensors(answer.outputs, answer.raw_output_contents,
                                           "raw_output_contents")["predict"][0]) for answer in answers]

        return [label for labels in await asyncio.gather(*(one_connection() for _ in range(16))) for label in labels]

    labels = asyncio.run(calls())
    assert labels == [0] * 80  # setosa, from whichever worker answered
    counts = {httpx.get(f"{server.url}/v2/models/iris/stats", headers={"x-shipyard-local": "1"}).json()
              ["model_stats"][0]["inference_count"] for _ in range(30)}
    total = httpx.get(f"{server.url}/v2/models/iris/stats").json()["model_stats"][0]["inference_count"]
    assert total == 80
    if len(counts) == 2:  # both workers answered gRPC calls
        assert sum(counts) == 80
