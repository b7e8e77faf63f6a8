"""Batching through the real server: merged executions in the statistics, 503 + Retry-After when full."""

from __future__ import annotations

import asyncio
import textwrap

import httpx

ROW = [5.1, 3.5, 1.4, 0.2]


def body(row=ROW):
    return {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": row}]}


async def burst(url: str, path: str, payloads: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(client.post(path, json=payload) for payload in payloads))


def test_concurrent_requests_run_as_merged_batches(start_server, artifacts, iris):
    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--max-batch-size", "32")
    features, _ = iris
    payloads = [body(features[i].tolist()) for i in range(150)] * 4
    responses = asyncio.run(burst(server.url, "/v2/models/iris/infer", payloads))
    assert all(r.status_code == 200 for r in responses)
    import joblib

    expected = joblib.load(artifacts["sk_logreg"]).predict(features[:150])
    assert [r.json()["outputs"][0]["data"][0] for r in responses[:150]] == expected.tolist()
    stats = httpx.get(f"{server.url}/v2/models/iris/stats").json()["model_stats"][0]
    assert stats["inference_count"] == 600
    assert stats["execution_count"] < 600  # some requests shared an execution
    sizes = {entry["batch_size"] for entry in stats["batch_stats"]}
    assert max(sizes) > 1 and max(sizes) <= 32
    executed_rows = sum(e["batch_size"] * e["compute_infer"]["count"] for e in stats["batch_stats"])
    assert executed_rows == 600


def test_batching_off_runs_every_request_alone(start_server, artifacts):
    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--max-batch-size", "1")
    responses = asyncio.run(burst(server.url, "/v2/models/iris/infer", [body()] * 50))
    assert all(r.status_code == 200 for r in responses)
    stats = httpx.get(f"{server.url}/v2/models/iris/stats").json()["model_stats"][0]
    assert stats["execution_count"] == stats["inference_count"] == 50


def test_full_queue_answers_503_with_retry_after(start_server, tmp_path):
    folder = tmp_path / "slowbatch"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent('''
        import time

        class Model:
            inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]

            def predict(self, inputs):
                time.sleep(0.3)
                return {"y": inputs["x"]}
    '''))
    (folder / "shipyard.yaml").write_text("max_batch_size: 4\nmax_queue: 2\n")
    server = start_server(folder)
    payload = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    responses = asyncio.run(burst(server.url, "/v2/models/slowbatch/infer", [payload] * 12))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "queued" in refused.json()["error"]
    assert httpx.post(f"{server.url}/v2/models/slowbatch/infer", json=payload, timeout=10).status_code == 200
