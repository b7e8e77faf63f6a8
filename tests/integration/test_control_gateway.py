"""The gateway against real ``shipyard serve`` replicas, over real sockets (REST and gRPC).

Replicas all serve one custom model under ``--name iris``; environment variables make them tell
which revision and replica answered (output ``revision``/``replica`` when the request has the
parameter ``who``), sleep on request (``sleep``), and, for the shadow revision, answer
differently above a threshold. The gateway runs on a uvloop event loop in a thread of this
process, as it runs inside ``shipyard up``; route tables are plain dicts the tests change.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import uvloop

from conftest import write_custom_model
from serverproc import ServerProcess
from shipyard.control.gateway import Gateway, routing
from shipyard.protocol.binary import tensor_from_bytes, tensor_to_bytes
from shipyard.protocol.grpc_codec import set_parameters
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

MODEL = '''
    import os
    import time

    import numpy as np

    class Model:
        def load(self):
            self.revision = os.environ["GW_REVISION"]
            self.replica = os.environ["GW_REPLICA"]
            self.differ_above = float(os.environ.get("GW_DIFFER_ABOVE", "inf"))

        def predict(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            out = {"out_" + name: value for name, value in inputs.items()}
            if "x" in inputs:
                x = inputs["x"].astype(np.float64)
                y = np.where(x > self.differ_above, 3.0, 2.0) * x
                # the shadow revision's answers are off in the 9th digit: within the comparison's tolerance
                out["y"] = y * (1 + 1e-9) if np.isfinite(self.differ_above) else y
            if parameters.get("who"):
                out["revision"] = np.array([self.revision], dtype=object)
                out["replica"] = np.array([self.replica], dtype=object)
            return out
'''

ONE, TWO, SHADOW = "iris-predictor-00001", "iris-predictor-00002", "iris-predictor-00003"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[dict[str, ServerProcess]]:
    """one-a, one-b: revision ONE; two: revision TWO; shadow: SHADOW (differs above 100)."""
    folder = write_custom_model(tmp_path_factory.mktemp("gateway") / "model", MODEL)
    plan = {"one-a": (ONE, {}), "one-b": (ONE, {}), "two": (TWO, {}), "shadow": (SHADOW, {"GW_DIFFER_ABOVE": "100"})}
    started = {name: ServerProcess(folder, "--name", "iris",
                                   env={"GW_REVISION": revision, "GW_REPLICA": name, **extra})
               for name, (revision, extra) in plan.items()}
    try:
        for process in started.values():
            process.wait_ready()
        yield started
    finally:
        for process in started.values():
            process.stop()


def address(process: ServerProcess) -> dict[str, str]:
    return {"http": process.url, "grpc": process.grpc_address}


def backend(revision: str, percent: int, tags: list[str], *processes: ServerProcess) -> dict[str, Any]:
    return {"revision": revision, "percent": percent, "tags": tags, "replicas": [address(p) for p in processes]}


class Routes:
    """What the controller would publish: tables by (namespace, isvc), each change a new version."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0

    def set(self, backends: list[dict[str, Any]], isvc: str = "iris", namespace: str = "default",
            **extra: Any) -> int:
        self.version += 1
        tables = dict(self.tables)
        tables[(namespace, isvc)] = {"isvc": isvc, "namespace": namespace, "protocol": "v2",
                                     "backends": backends, "shadow": None, "version": self.version, **extra}
        self.tables = tables  # one assignment, as a store read returns a fresh dict
        return self.version

    def __call__(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.tables


class GatewayThread:
    """A Gateway on a uvloop loop in a background thread; ``call`` runs a coroutine there."""

    def __init__(self, routes: Routes) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(routes, "127.0.0.1", http_port=0, grpc_port=0)
        self.call(self.gateway.start())

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, function: Any, *args: Any) -> Any:
        """Call a plain method of the gateway on its loop (its state belongs to that thread)."""
        async def call() -> Any:
            return function(*args)
        return self.call(call())

    def wait_version(self, namespace: str, isvc: str, version: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            table = self.run(self.gateway.table, namespace, isvc)
            if table is not None and table.version >= version:
                return
            time.sleep(0.02)
        raise AssertionError(f"gateway did not load version {version} of {namespace}/{isvc}")

    def close(self) -> None:
        try:
            self.call(self.gateway.stop(2))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
def gateway(routes) -> Iterator[GatewayThread]:
    running = GatewayThread(routes)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def http(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.gateway.http_url, timeout=30) as client:
        yield client


@pytest.fixture
def stub(gateway) -> Iterator[Stub]:
    with grpc.insecure_channel(gateway.gateway.grpc_address) as channel:
        yield Stub(channel)


def v2_body(values: list[float], who: bool = True, **parameters: Any) -> dict[str, Any]:
    return {"parameters": {"who": who, **parameters},
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [len(values)], "data": values}]}


def outputs(answer: httpx.Response) -> dict[str, list[Any]]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"] for o in answer.json()["outputs"]}


def grpc_request(values: list[float], who: bool = True, **parameters: Any) -> Any:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[len(values)])
    tensor.contents.fp64_contents.extend(values)
    set_parameters(request.parameters, {"who": who, **parameters})
    return request


def grpc_outputs(response: Any) -> dict[str, np.ndarray]:
    return {o.name: tensor_from_bytes(o.name, o.datatype, list(o.shape), response.raw_output_contents[i])
            for i, o in enumerate(response.outputs)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_taken_ports_are_refused_by_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for ports, message in (({"http_port": port, "grpc_port": 0}, f"'127.0.0.1', {port}"),
                               ({"http_port": 0, "grpc_port": port}, f"cannot listen for gRPC on 127.0.0.1:{port}")):
            gateway = Gateway(lambda: {}, "127.0.0.1", **ports)
            with pytest.raises(OSError, match=message):
                asyncio.run(gateway.start())


# -- traffic split ------------------------------------------------------------------------------
def test_rest_split_20_80_over_1000_requests(gateway, routes, http, replicas):
    routes.set([backend(TWO, 20, ["latest"], replicas["two"]),
                backend(ONE, 80, ["prev"], replicas["one-a"], replicas["one-b"])])
    gateway.wait_version("default", "iris", routes.version)
    seen: dict[str, int] = {}
    for _ in range(1000):
        answer = http.post("/v2/models/iris/infer", json=v2_body([1.0]))
        data = outputs(answer)
        assert answer.headers["x-shipyard-revision"] == data["revision"][0]  # the header tells the truth
        seen[data["revision"][0]] = seen.get(data["revision"][0], 0) + 1
        seen[data["replica"][0]] = seen.get(data["replica"][0], 0) + 1
    assert abs(seen[TWO] / 1000 - 0.20) <= 0.03, seen
    assert seen[TWO] + seen[ONE] == 1000
    assert abs(seen["one-a"] - seen["one-b"]) <= 2, seen  # replicas of a revision take turns
    stats = gateway.run(gateway.gateway.stats, f"default/{TWO}", 60)
    assert stats.requests == seen[TWO] and stats.errors == 0 and stats.p99_ms is not None
    assert gateway.run(gateway.gateway.in_flight, f"default/{TWO}") == 0


def test_grpc_split_20_80_over_1000_requests(gateway, routes, stub, replicas):
    routes.set([backend(TWO, 20, ["latest"], replicas["two"]), backend(ONE, 80, ["prev"], replicas["one-a"])])
    gateway.wait_version("default", "iris", routes.version)
    seen = {ONE: 0, TWO: 0}
    for _ in range(1000):
        response, call = stub.ModelInfer.with_call(grpc_request([1.0]))
        revision = grpc_outputs(response)["revision"][0].decode()
        assert dict(call.initial_metadata())["x-shipyard-revision"] == revision
        seen[revision] += 1
    assert abs(seen[TWO] / 1000 - 0.20) <= 0.03, seen


# -- tags, hosts, namespaces -----------------------------------------------------------------------
def test_tags_by_host_and_header_reach_a_dark_revision(gateway, routes, http, stub, replicas):
    # blue-green: TWO is deployed dark (0%) and reachable only through its tag or name
    routes.set([backend(TWO, 0, ["latest"], replicas["two"]), backend(ONE, 100, ["prev"], replicas["one-a"])])
    routes.set([backend(ONE, 100, [], replicas["one-b"])], isvc="iris", namespace="team-a")
    gateway.wait_version("team-a", "iris", routes.version)

    def revision(path: str = "/v2/models/iris/infer", **headers: str) -> str:
        return outputs(http.post(path, json=v2_body([1.0]), headers=headers))["revision"][0]

    assert {revision() for _ in range(20)} == {ONE}
    assert revision(host="latest-iris.default.example.com") == TWO
    assert revision(host="prev-iris.default.example.com:8080") == ONE
    assert revision(host="iris.default.example.com") == ONE
    assert revision(**{"x-shipyard-revision": "latest"}) == TWO
    assert revision(**{"x-shipyard-revision": TWO}) == TWO
    v1 = http.post("/v1/models/iris:predict", json={"instances": [[1.0]]}, headers={"x-shipyard-revision": "latest"})
    assert v1.status_code == 200 and v1.headers["x-shipyard-revision"] == TWO
    # the namespace comes from the host (any domain), the model name from the path...
    team = outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0]), headers={"host": "gw.team-a.local"}))
    assert team["replica"] == ["one-b"]
    # ...or both from the host
    team = outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0]), headers={"host": "iris.team-a.svc.local"}))
    assert team["replica"] == ["one-b"]
    # with a service's host every path is forwarded, as KServe's ingress does
    ready = http.get("/v2/health/ready", headers={"host": "latest-iris.default.example.com"})
    assert ready.status_code == 200 and ready.headers["x-shipyard-revision"] == TWO

    unknown = http.post("/v2/models/iris/infer", json=v2_body([1.0]), headers={"x-shipyard-revision": "canary"})
    assert unknown.status_code == 404
    assert "'canary' is neither a revision nor a tag" in unknown.json()["error"] and TWO in unknown.json()["error"]

    response = stub.ModelInfer(grpc_request([1.0]), metadata=(("x-shipyard-revision", "latest"),))
    assert grpc_outputs(response)["revision"][0] == TWO.encode()
    response = stub.ModelInfer(grpc_request([1.0]), metadata=(("x-shipyard-namespace", "team-a"),))
    assert grpc_outputs(response)["replica"][0] == b"one-b"


def test_v1_metadata_and_readiness_are_proxied(gateway, routes, http, stub, replicas):
    routes.set([backend(ONE, 100, ["latest"], replicas["one-a"])])
    gateway.wait_version("default", "iris", routes.version)
    v1 = http.post("/v1/models/iris:predict", json={"instances": [[1.0, 2.0]]})
    assert v1.status_code == 200, v1.text
    assert v1.headers["x-shipyard-revision"] == ONE and "predictions" in v1.json()
    assert http.get("/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert http.get("/v2/models/iris").json()["name"] == "iris"
    assert http.get("/v2/models/iris/ready").status_code == 200
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris")).ready is True
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")).name == "iris"


# -- the gateway's own answers and errors ----------------------------------------------------------
def test_gateway_health_list_and_error_answers(gateway, routes, http, stub, replicas):
    routes.set([backend(ONE, 100, ["latest"], replicas["one-a"])])
    routes.set([backend(TWO, 100, ["latest"])], isvc="starting")  # no replica ready yet
    gateway.wait_version("default", "starting", routes.version)

    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json()["name"] == "shipyard-gateway"
    listed = http.get("/v2/models").json()
    assert listed["models"] == ["iris", "starting"] and http.get("/v1/models").json() == listed
    assert {s["name"]: s["revisions"][0]["replicas"] for s in listed["services"]} == {"iris": 1, "starting": 0}

    missing = http.post("/v2/models/nope/infer", json=v2_body([1.0]))
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("model 'nope' is not served;") and "iris" in missing.json()["error"]
    assert http.post("/v1/models/nope:predict", json={"instances": [1]}).status_code == 404
    assert http.get("/somewhere").status_code == 404

    waiting = http.post("/v2/models/starting/infer", json=v2_body([1.0]))
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
    assert "'default/starting' has no ready replica" in waiting.json()["error"]

    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "shipyard-gateway"
    assert stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="starting")).ready is False
    for request, code in ((pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND),
                          (pb.ModelInferRequest(model_name="starting"), grpc.StatusCode.UNAVAILABLE)):
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request)
        assert raised.value.code() == code
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.ModelStreamInfer(iter([grpc_request([1.0])])))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED and "ModelInfer" in raised.value.details()

    # a replica's own errors pass through unchanged, and 4xx do not count against the revision
    bad = http.post("/v2/models/iris/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "error" in bad.json() and bad.headers["x-shipyard-revision"] == ONE
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"1"]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in raised.value.details()
    assert gateway.run(gateway.gateway.stats, f"default/{ONE}", 60).errors == 0


def test_route_timeout_answers_504(gateway, routes, http, replicas):
    routes.set([backend(TWO, 100, ["latest"], replicas["two"])], timeout_s=0.3)
    gateway.wait_version("default", "iris", routes.version)
    answer = http.post("/v2/models/iris/infer", json=v2_body([1.0], sleep=0.8))
    assert answer.status_code == 504 and "within 0.3s" in answer.json()["error"]
    stats = gateway.run(gateway.gateway.stats, f"default/{TWO}", 60)
    assert stats.requests == 1 and stats.errors == 1
    time.sleep(0.6)  # let the replica finish that predict before the next test uses it


# -- table swaps, drain, retries --------------------------------------------------------------------
def test_table_swaps_under_concurrent_load_lose_no_request(gateway, routes, replicas):
    one, two = replicas["one-a"], replicas["two"]
    routes.set([backend(ONE, 100, ["latest"], one)])
    gateway.wait_version("default", "iris", routes.version)
    plans = [[backend(ONE, 50, ["prev"], one), backend(TWO, 50, ["latest"], two)],
             [backend(TWO, 100, ["latest"], two)],
             [backend(ONE, 100, ["latest"], one), backend(TWO, 0, ["prev"], two)],
             [backend(TWO, 80, ["latest"], two), backend(ONE, 20, ["prev"], one)]]
    stop = threading.Event()

    async def load() -> tuple[int, dict[Any, int]]:
        results: dict[Any, int] = {}
        async with httpx.AsyncClient(base_url=gateway.gateway.http_url, timeout=30) as client:
            async def worker() -> None:
                while not stop.is_set():
                    answer = await client.post("/v2/models/iris/infer", json=v2_body([1.0]))
                    key = outputs(answer)["revision"][0] if answer.status_code == 200 else answer.status_code
                    results[key] = results.get(key, 0) + 1
            await asyncio.gather(*(worker() for _ in range(8)))
        return sum(results.values()), results

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(asyncio.run, load())
        for plan in plans:
            time.sleep(0.4)
            gateway.wait_version("default", "iris", routes.set(plan))
        time.sleep(0.4)
        stop.set()
        total, results = running.result(60)
    failed = {key: count for key, count in results.items() if key not in (ONE, TWO)}
    assert failed == {}, results  # every answer a 200, from one revision or the other
    assert results[ONE] > 50 and results[TWO] > 50 and total > 200


def test_in_flight_request_finishes_on_its_revision_after_a_swap(gateway, routes, http, replicas):
    routes.set([backend(ONE, 100, ["latest"], replicas["one-b"])])
    gateway.wait_version("default", "iris", routes.version)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http.post, "/v2/models/iris/infer", json=v2_body([1.0], sleep=1.0))
        deadline = time.monotonic() + 5
        while gateway.run(gateway.gateway.in_flight, f"default/{ONE}") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gateway.run(gateway.gateway.in_flight, f"default/{ONE}") == 1
        gateway.wait_version("default", "iris", routes.set([backend(TWO, 100, ["latest"], replicas["two"])]))
        assert gateway.run(gateway.gateway.references, f"default/{ONE}") is False  # no route points at it...
        assert gateway.run(gateway.gateway.in_flight, f"default/{ONE}") == 1  # ...but it is still draining
        assert outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0])))["revision"] == [TWO]
        assert outputs(slow.result(10))["revision"] == [ONE]
    assert gateway.run(gateway.gateway.in_flight, f"default/{ONE}") == 0


def test_killed_replica_requests_retry_on_a_sibling(gateway, routes, http, stub, replicas, tmp_path, monkeypatch):
    # no sitting out after a refused connection: every other request meets the dead replica and must retry
    monkeypatch.setattr(routing, "EJECT_S", 0.0)
    folder = write_custom_model(tmp_path / "model", MODEL)
    doomed = ServerProcess(folder, "--name", "iris", env={"GW_REVISION": ONE, "GW_REPLICA": "doomed"})
    try:
        doomed.wait_ready()
        routes.set([backend(ONE, 100, ["latest"], replicas["one-a"], doomed)])
        gateway.wait_version("default", "iris", routes.version)
        warm = {outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0])))["replica"][0] for _ in range(4)}
        assert warm == {"one-a", "doomed"}  # keep-alive connections to both are now pooled
        assert {grpc_outputs(stub.ModelInfer(grpc_request([1.0])))["replica"][0] for _ in range(2)} == \
            {b"one-a", b"doomed"}
        doomed.stop(signal.SIGKILL)
        for _ in range(10):
            assert outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0])))["replica"] == ["one-a"]
        for _ in range(10):
            assert grpc_outputs(stub.ModelInfer(grpc_request([1.0])))["replica"][0] == b"one-a"
    finally:
        doomed.stop()
    assert gateway.run(gateway.gateway.stats, f"default/{ONE}", 60).errors == 0


def test_every_replica_gone_answers_502(gateway, routes, http, stub):
    routes.set([backend(ONE, 100, ["latest"])])
    routes.tables[("default", "iris")]["backends"][0]["replicas"] = [
        {"http": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{port}"} for port in (free_port(), free_port())]
    gateway.wait_version("default", "iris", routes.version)
    answer = http.post("/v2/models/iris/infer", json=v2_body([1.0]))
    assert answer.status_code == 502 and "could not be reached" in answer.json()["error"]
    assert answer.json()["error"].count("127.0.0.1") == 2  # tried once more on the other replica
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(grpc_request([1.0]))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "could not be reached" in raised.value.details()
    assert gateway.run(gateway.gateway.stats, f"default/{ONE}", 60).errors == 2


# -- shadow -------------------------------------------------------------------------------------------
def test_shadow_copies_are_compared_and_never_returned(gateway, routes, http, stub, replicas):
    shadow = backend(SHADOW, 100, [], replicas["shadow"])
    routes.set([backend(ONE, 100, ["latest"], replicas["one-a"])], shadow=shadow)
    gateway.wait_version("default", "iris", routes.version)
    for value in [1.0, 2.5, 7.0] * 10:  # the shadow agrees (within tolerance) below 100
        assert outputs(http.post("/v2/models/iris/infer", json=v2_body([value], who=False)))["y"] == [2 * value]
    for value in [150.0, 500.0] * 5:  # and answers 3x above it; clients still get the live 2x
        answer = http.post("/v2/models/iris/infer", json=v2_body([value], who=False))
        assert outputs(answer)["y"] == [2 * value] and answer.headers["x-shipyard-revision"] == ONE
    for value in (1.0, 2.0, 300.0):
        assert grpc_outputs(stub.ModelInfer(grpc_request([value], who=False)))["y"][0] == 2 * value
    http.get("/v2/models/iris")  # metadata is not mirrored

    report = wait_for_shadow(gateway, mirrored=43)
    assert report["revision"] == SHADOW
    assert (report["matched"], report["mismatched"], report["shadow_errors"], report["dropped"]) == (32, 11, 0, 0)
    assert report["live_ms"]["p50"] > 0 and report["shadow_ms"]["p99"] > 0
    last = report["last_mismatches"][-1]
    assert "outputs.y.data[0]" in last["difference"] and "900.0" in last["difference"]
    assert gateway.run(gateway.gateway.stats, f"default/{SHADOW}", 60).requests == 43

    # a shadow that cannot be reached: counted, and the live answers do not notice
    dead = {"revision": SHADOW, "percent": 50, "replicas": [{"http": f"http://127.0.0.1:{free_port()}"}]}
    routes.set([backend(ONE, 100, ["latest"], replicas["one-a"])], shadow=dead)
    gateway.wait_version("default", "iris", routes.version)
    for _ in range(10):
        assert outputs(http.post("/v2/models/iris/infer", json=v2_body([1.0], who=False)))["y"] == [2.0]
    report = wait_for_shadow(gateway, mirrored=48)
    assert report["shadow_errors"] == 5 and report["matched"] == 32  # 50% of 10 mirrored


def wait_for_shadow(gateway: GatewayThread, mirrored: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = gateway.run(gateway.gateway.shadow_report, "default", "iris")
        if report and report["mirrored"] >= mirrored and report["pending"] == 0:
            return report
        time.sleep(0.02)
    raise AssertionError(f"shadow did not finish: {report}")


# -- wire compatibility ----------------------------------------------------------------------------
def test_binary_tensors_pass_through_byte_exact(gateway, routes, replicas):
    routes.set([backend(ONE, 100, ["latest"], replicas["one-a"])])
    gateway.wait_version("default", "iris", routes.version)
    tensors = {"f": np.array([[0.1, -1e30, 3.5]], np.float32), "i": np.array([[-(2**63), 2**63 - 1]], np.int64),
               "s": np.array([[b"\x00\xff binary", b""]], dtype=object)}
    blobs = [tensor_to_bytes(name, array) for name, array in tensors.items()]
    header = json.dumps({
        "id": "same-id",
        "inputs": [{"name": name, "datatype": datatype, "shape": list(tensors[name].shape),
                    "parameters": {"binary_data_size": len(raw)}} for name, (datatype, raw) in zip(tensors, blobs)],
        "outputs": [{"name": f"out_{name}", "parameters": {"binary_data": True}} for name in tensors],
    }).encode()
    body = header + b"".join(raw for _, raw in blobs)
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}

    def raw_answer(base: str, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with httpx.Client(timeout=30) as client, client.stream(
                "POST", f"{base}/v2/models/iris/infer", content=body, headers={**headers, **extra}) as answer:
            return answer.status_code, dict(answer.headers), b"".join(answer.iter_raw())

    for extra in ({"accept-encoding": "identity"}, {"accept-encoding": "gzip"}):
        status, via_gateway, proxied = raw_answer(gateway.gateway.http_url, extra)
        _, direct_headers, direct = raw_answer(replicas["one-a"].url, extra)
        assert status == 200 and proxied == direct
        for name in ("inference-header-content-length", "content-type", "content-encoding"):
            assert via_gateway.get(name) == direct_headers.get(name)
    assert via_gateway["content-encoding"] == "gzip"
    length = int(via_gateway["inference-header-content-length"])
    assert json.loads(__import__("zlib").decompress(proxied, 31)[:length])["id"] == "same-id"


def test_tritonclient_http_through_the_gateway(gateway, routes, replicas):
    routes.set([backend(ONE, 50, ["prev"], replicas["one-a"]), backend(TWO, 50, ["latest"], replicas["two"])])
    gateway.wait_version("default", "iris", routes.version)
    client = httpclient.InferenceServerClient(gateway.gateway.http_url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("iris")
        assert client.get_model_metadata("iris")["name"] == "iris"
        seen = set()
        for binary in (True, False, True, False):
            x = np.array([[1.5, -2.0, 3.25]], np.float64)
            words = np.array([[b"hello", b"w\xc3\xb6rld"]], dtype=object)
            inputs = [httpclient.InferInput("x", list(x.shape), "FP64"),
                      httpclient.InferInput("w", list(words.shape), "BYTES")]
            inputs[0].set_data_from_numpy(x, binary_data=binary)
            inputs[1].set_data_from_numpy(words, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput(name, binary_data=binary)
                      for name in ("out_x", "out_w", "y", "revision")]
            result = client.infer("iris", inputs, outputs=wanted, parameters={"who": True})
            np.testing.assert_array_equal(result.as_numpy("out_x"), x)
            # tritonclient gives BYTES as bytes when binary, as str from JSON
            assert [as_bytes(w) for w in result.as_numpy("out_w").ravel()] == list(words.ravel())
            np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
            seen.add(as_bytes(result.as_numpy("revision")[0]))
        assert seen == {ONE.encode(), TWO.encode()}
    finally:
        client.close()


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
