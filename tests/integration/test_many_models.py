"""Many models in one server: lazy single-flight loading, memory-limit eviction, draining unloads, metrics."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
import threading
import time

import httpx
import pytest

ROW = [5.1, 3.5, 1.4, 0.2]
IRIS = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
ONE = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}

COUNTING = '''
    import time
    from pathlib import Path
    import numpy as np

    class Model:
        def __init__(self, data_dir):
            self.data_dir = data_dir

        def load(self):
            with open(self.data_dir / "loads.txt", "a") as log:
                log.write("x")
            time.sleep({load_seconds})
            self.weights = np.ones({megabytes} * 1024 * 1024 // 8)  # resident: written pages

        def predict(self, inputs, parameters):
            time.sleep(float(parameters.get("seconds", 0)))
            return inputs["input-0"] * 2
'''


def make_model(root, name, load_seconds=0.0, megabytes=1):
    folder = root / name
    (folder / "data").mkdir(parents=True)
    (folder / "model.py").write_text(textwrap.dedent(COUNTING.format(load_seconds=load_seconds, megabytes=megabytes)))
    return folder


def loads(root, name) -> int:
    path = root / name / "data" / "loads.txt"
    return len(path.read_text()) if path.exists() else 0


def index(url):
    return {row["name"]: row for row in httpx.post(f"{url}/v2/repository/index").json()}


@pytest.fixture
def repository(tmp_path, artifacts):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(artifacts["sk_logreg"], root / "iris.joblib")
    return root


def test_first_requests_load_a_cold_model_once_without_stalling_others(start_server, repository):
    make_model(repository, "cold", load_seconds=1.5)
    server = start_server("--model-repository", repository, "--load-on-request")
    url = server.url
    assert httpx.post(f"{url}/v2/repository/models/iris/load").status_code == 200

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            cold = [asyncio.ensure_future(client.post("/v2/models/cold/infer", json=ONE)) for _ in range(8)]
            await asyncio.sleep(0.3)  # the cold model is loading now
            started = time.monotonic()
            warm = await client.post("/v2/models/iris/infer", json=IRIS)
            warm_seconds = time.monotonic() - started
            return await asyncio.gather(*cold), warm, warm_seconds

    cold, warm, warm_seconds = asyncio.run(scenario())
    assert [r.status_code for r in cold] == [200] * 8
    assert cold[0].json()["outputs"][0]["data"] == [2.0]
    assert loads(repository, "cold") == 1  # single flight
    assert warm.status_code == 200 and warm_seconds < 1.0  # loading one model did not stall another
    assert index(url)["cold"]["state"] == "READY"


def test_memory_limit_evicts_the_least_recently_used_idle_model(start_server, repository):
    for name in ("big_a", "big_b"):
        make_model(repository, name, megabytes=80)
    server = start_server("--model-repository", repository, "--load-on-request", "--memory-limit", "120MiB")
    url = server.url
    assert httpx.post(f"{url}/v2/models/big_a/infer", json=ONE, timeout=60).status_code == 200
    assert httpx.post(f"{url}/v2/models/big_b/infer", json=ONE, timeout=60).status_code == 200
    rows = index(url)
    assert rows["big_b"]["state"] == "READY"
    assert rows["big_a"]["state"] == "UNAVAILABLE" and "memory limit" in rows["big_a"]["reason"]
    # the evicted model loads again on its next request, and now the other one makes room
    assert httpx.post(f"{url}/v2/models/big_a/infer", json=ONE, timeout=60).status_code == 200
    rows = index(url)
    assert rows["big_a"]["state"] == "READY" and rows["big_b"]["state"] == "UNAVAILABLE"
    assert loads(repository, "big_a") == 2
    metrics = httpx.get(f"{url}/metrics").text
    assert 'shipyard_model_loaded{model="big_a",version="1"} 1.0' in metrics
    assert 'shipyard_model_loaded{model="big_b",version="1"} 0.0' in metrics


def test_unload_lets_in_flight_requests_finish(start_server, repository):
    make_model(repository, "slow")
    server = start_server("--model-repository", repository)
    url = server.url
    result = {}

    def call():
        result["response"] = httpx.post(f"{url}/v2/models/slow/infer", json={**ONE, "parameters": {"seconds": 1.5}},
                                        timeout=30)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.4)
    started = time.monotonic()
    assert httpx.post(f"{url}/v2/repository/models/slow/unload", timeout=30).status_code == 200
    assert time.monotonic() - started > 0.5  # it waited for the request in flight
    thread.join()
    assert result["response"].status_code == 200
    assert httpx.post(f"{url}/v2/models/slow/infer", json=ONE).status_code == 503


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_count_every_request_across_workers(start_server, artifacts, workers):
    server = start_server(artifacts["sk_logreg"], "--name", "iris", "--workers", workers)
    url = server.url

    async def burst():
        async def one(index):
            async with httpx.AsyncClient(timeout=30) as client:
                body = IRIS if index % 5 else {"inputs": [{**IRIS["inputs"][0], "shape": [1, 3], "data": ROW[:3]}]}
                return (await client.post(f"{url}/v2/models/iris/infer", json=body)).status_code

        return await asyncio.gather(*(one(i) for i in range(50)))

    statuses = asyncio.run(burst())
    assert statuses.count(200) == 40 and statuses.count(400) == 10
    text = httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/metrics").headers["content-type"].startswith("text/plain")
    assert 'shipyard_requests_total{model="iris",protocol="v2-rest",status="200"} 40.0' in text
    assert 'shipyard_requests_total{model="iris",protocol="v2-rest",status="400"} 10.0' in text
    assert 'shipyard_request_duration_seconds_count{model="iris",protocol="v2-rest"} 40.0' in text
    assert 'shipyard_requests_in_flight{model="iris"} 0.0' in text
    assert 'shipyard_model_loaded{model="iris",version="1"} 1.0' in text
    batch_count = next(line for line in text.splitlines() if line.startswith('shipyard_batch_size_sum{model="iris"}'))
    assert float(batch_count.split()[-1]) == 40.0  # every successful row ran in some execution
