"""The dashboard's sampler (ui_metrics.py), its event stream over a real HttpServer, the API's gate
(auth.py) and the graph step counters, in process with a real Store and real gateway parts."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shipyard.control.api import ControlApi
from shipyard.control.auth import Auth, is_loopback
from shipyard.control.gateway.graphs import GraphTable
from shipyard.control.gateway.observe import Observer
from shipyard.control.gateway.routing import Router
from shipyard.control.resources import Resource
from shipyard.control.store import Store
from shipyard.control.ui_api import UiApi
from shipyard.control.ui_metrics import UiMetrics, parse_batch_sizes
from shipyard.graph.router import StepResult
from shipyard.server.http import HttpServer
from shipyard.server.rest import Request


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def isvc(store: Store, name: str, namespace: str = "default") -> None:
    store.apply(Resource("serving.kserve.io/v1beta1", "InferenceService", name, namespace,
                         spec={"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}}, uid=name))


def dataset(store: Store, name: str) -> None:
    store.apply(Resource("data.fluid.io/v1alpha1", "Dataset", name, "default", spec={"mounts": []}, uid=name))


def route(namespace: str, isvc_key: str, *revisions: tuple[str, int], component: str = "predictor") -> dict[str, Any]:
    return {"isvc": isvc_key, "namespace": namespace, "component": component, "version": 1,
            "backends": [{"revision": revision, "percent": percent, "replicas": [{"http": "http://127.0.0.1:9"}]}
                         for revision, percent in revisions]}


def replica(name: str, revision: str, state: str, index: int = 0, url: str | None = None,
            namespace: str = "default") -> Any:
    return SimpleNamespace(namespace=namespace, isvc=name, revision=revision, index=index, state=state,
                           handle=SimpleNamespace(http_url=url) if url else None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


def answer(observer: Observer, clock: Clock, revision: str, latency_ms: float, ok: bool = True) -> None:
    started = observer.begin(revision)
    clock.now += latency_ms / 1000.0
    observer.end(revision, started, ok)


def test_a_service_sample_sums_its_revisions_answers_since_the_last_sample(store: Store) -> None:
    isvc(store, "iris")
    isvc(store, "idle")
    monotonic, wall = Clock(50.0), Clock(1_700_000_000.0)
    observer = Observer(clock=monotonic)
    router = Router()
    router.update({("default", "iris"): route("default", "iris", ("iris-predictor-00001", 80),
                                              ("iris-predictor-00002", 20))})
    replicas = SimpleNamespace(items={
        1: replica("iris", "iris-predictor-00001", "ready"), 2: replica("iris", "iris-predictor-00002", "starting"),
        3: replica("iris", "iris-predictor-00000", "draining"), 4: replica("other", "other-predictor-00001", "ready")})
    metrics = UiMetrics(store, SimpleNamespace(observer=observer, router=router), replicas, clock=wall)
    metrics.sample()  # the baseline
    for latency in (1, 2, 3, 4, 5, 6, 7, 8, 9):
        answer(observer, monotonic, "default/iris-predictor-00001", latency)
    answer(observer, monotonic, "default/iris-predictor-00002", 100.0, ok=False)
    monotonic.now = 51.0 + 0.0001
    wall.now += 1
    tick = metrics.sample()
    numbers = tick["services"]["default/iris"]
    assert numbers["rps"] == pytest.approx(10.0, rel=0.01)
    assert numbers["p50_ms"] == pytest.approx(5.0, rel=0.05) and numbers["p99_ms"] == pytest.approx(100.0, rel=0.05)
    assert numbers["error_rate"] == 0.1
    assert (numbers["replicas"], numbers["ready_replicas"], numbers["batch_size"]) == (2, 1, None)
    assert tick["services"]["default/idle"] == {"rps": 0.0, "p50_ms": None, "p99_ms": None, "error_rate": 0.0,
                                                "replicas": 0, "ready_replicas": 0, "batch_size": None}
    monotonic.now += 1
    wall.now += 1
    quiet = metrics.sample()["services"]["default/iris"]  # nothing new: nothing counted twice
    assert quiet["rps"] == 0.0 and quiet["p50_ms"] is None
    points = metrics.service_points("default", "iris")
    assert [point["rps"] for point in points] == [0.0, pytest.approx(10.0, rel=0.01), 0.0]
    assert points[1]["time"] == 1_700_000_001.0 and points[1]["error_rate"] == 0.1


def test_a_service_with_a_transformer_is_measured_at_its_entry(store: Store) -> None:
    isvc(store, "t")
    monotonic = Clock(10.0)
    observer = Observer(clock=monotonic)
    router = Router()
    router.update({("default", "t"): route("default", "t", ("t-predictor-00001", 100)),
                   ("default", "t:transformer"): route("default", "t:transformer", ("t-transformer-00001", 100),
                                                       component="transformer")})
    metrics = UiMetrics(store, SimpleNamespace(observer=observer, router=router), None, clock=Clock(1.0))
    metrics.sample()
    answer(observer, monotonic, "default/t-transformer-00001", 20)
    answer(observer, monotonic, "default/t-predictor-00001", 5)
    monotonic.now += 1
    assert metrics.sample()["services"]["default/t"]["p50_ms"] == pytest.approx(20.0)


def test_a_revision_that_left_the_table_still_counts_for_a_while(store: Store) -> None:
    isvc(store, "iris")
    monotonic = Clock(10.0)
    observer = Observer(clock=monotonic)
    router = Router()
    router.update({("default", "iris"): route("default", "iris", ("iris-predictor-00001", 100))})
    metrics = UiMetrics(store, SimpleNamespace(observer=observer, router=router), None, clock=Clock(1.0))
    metrics.sample()
    router.update({("default", "iris"): route("default", "iris", ("iris-predictor-00002", 100))})  # rolled out
    answer(observer, monotonic, "default/iris-predictor-00001", 3)  # finished on the old revision
    answer(observer, monotonic, "default/iris-predictor-00002", 3)
    monotonic.now += 1
    assert metrics.sample()["services"]["default/iris"]["rps"] == pytest.approx(2.0, rel=0.01)


def test_history_is_a_ring_buffer_and_forgets_deleted_resources(store: Store) -> None:
    isvc(store, "iris")
    metrics = UiMetrics(store, None, None, interval_s=1.0, history_s=5, clock=Clock())
    for _ in range(8):
        metrics.sample()
    assert len(metrics.service_points("default", "iris")) == 5
    store.remove("InferenceService", "default", "iris")
    tick = metrics.sample()
    assert tick["changed"] == ["InferenceService"] and tick["services"] == {}
    assert metrics.service_points("default", "iris") == []


def test_changed_names_the_kinds_whose_resources_status_events_or_replicas_changed(store: Store) -> None:
    isvc(store, "iris")
    dataset(store, "images")
    metrics = UiMetrics(store, None, None, clock=Clock())
    assert metrics.sample()["changed"] == []
    assert metrics.sample()["changed"] == []
    store.set_status("Dataset", "default", "images", {"phase": "Bound"})
    assert metrics.sample()["changed"] == ["Dataset"]
    store.event("TrainJob", "default", "job", "Normal", "Created", "queued")
    assert metrics.sample()["changed"] == ["TrainJob"]
    from shipyard.control.store import ReplicaRecord

    store.upsert_replica(ReplicaRecord("default", "iris", "iris-predictor-00001", 0, 1, None, None, "starting", 0,
                                       "", 0.0, "/tmp/x.log"))
    assert metrics.sample()["changed"] == ["InferenceService"]
    store.upsert_replica(ReplicaRecord("default", "iris", "iris-predictor-00001", 0, 1, None, None, "ready", 0,
                                       "", 0.0, "/tmp/x.log"))
    assert metrics.sample()["changed"] == ["InferenceService"]
    store.mark_deleting("Dataset", "default", "images")
    assert metrics.sample()["changed"] == ["Dataset"]
    assert metrics.sample()["changed"] == []


def test_dataset_numbers_come_from_the_controllers_cache_states(store: Store) -> None:
    dataset(store, "images")
    dataset(store, "cold")
    datasets = SimpleNamespace(tracked={("default", "images"): SimpleNamespace(cache_states={
        "cachedPercentage": "42.5%", "cacheHitRatio": "80.0%", "cacheHitRatioWindow": "93.0%"})})
    tick = UiMetrics(store, None, None, datasets, clock=Clock()).sample()
    assert tick["datasets"] == {"default/images": {"hit_ratio": 0.93, "cached_percent": 42.5},
                                "default/cold": {"hit_ratio": None, "cached_percent": None}}


def test_batch_sizes_are_averaged_between_two_scrapes_of_the_ready_predictor_replicas(store: Store) -> None:
    isvc(store, "iris")
    exposition = {
        "http://a": [(10.0, 10.0), (40.0, 20.0), (5.0, 1.0)],  # the third read: a restarted replica
        "http://b": [(0.0, 0.0), (20.0, 5.0), (25.0, 6.0)],
    }
    reads = {url: iter(values) for url, values in exposition.items()}

    async def fetch(url: str) -> bytes:
        total, count = next(reads[url])
        return (f'# TYPE shipyard_batch_size histogram\nshipyard_batch_size_bucket{{model="m",le="1.0"}} 1.0\n'
                f'shipyard_batch_size_sum{{model="m"}} {total}\nshipyard_batch_size_count{{model="m"}} {count}\n'
                f'shipyard_batch_size_sum{{model="other"}} 0.0\n').encode()

    replicas = SimpleNamespace(items={
        1: replica("iris", "iris-predictor-00001", "ready", 0, "http://a"),
        2: replica("iris", "iris-predictor-00001", "ready", 1, "http://b"),
        3: replica("iris", "iris-predictor-00001", "starting", 2, "http://c"),
        4: replica("iris:transformer", "iris-transformer-00001", "ready", 0, "http://t")})
    wall = Clock()
    metrics = UiMetrics(store, None, replicas, clock=wall, fetch=fetch)

    async def scrape() -> None:
        await metrics.scrape()

    asyncio.run(scrape())  # baseline
    assert metrics.sample()["services"]["default/iris"]["batch_size"] is None
    asyncio.run(scrape())  # a: +30 rows in +10 runs, b: +20 in +5
    assert metrics.sample()["services"]["default/iris"]["batch_size"] == pytest.approx(50 / 15, rel=1e-3)
    asyncio.run(scrape())  # a restarted (5 rows in 1 run), b: +5 in +1
    assert metrics.sample()["services"]["default/iris"]["batch_size"] == pytest.approx(5.0)
    wall.now += 60  # no scrape for a long time: no number rather than a stale one
    assert metrics.sample()["services"]["default/iris"]["batch_size"] is None
    assert parse_batch_sizes(b"shipyard_batch_size_sum 3\nshipyard_batch_size_count 2\n") == (3.0, 2.0)


def test_a_subscriber_gets_every_tick_and_a_slow_one_loses_the_oldest(store: Store) -> None:
    async def scenario() -> None:
        metrics = UiMetrics(store, None, None, clock=Clock())
        queue = metrics.subscribe()
        for _ in range(40):
            metrics.sample()
        assert queue.qsize() == 30 and metrics.subscribers == 1
        assert json.loads(queue.get_nowait())["changed"] == []
        metrics.unsubscribe(queue)
        metrics.sample()
        assert metrics.subscribers == 0

    asyncio.run(scenario())


# -- the event stream over a real server ---------------------------------------------------------------
def read_until(sock: socket.socket, marker: bytes, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_the_event_stream_sends_ticks_and_forgets_a_client_that_left(store: Store, tmp_path: Path) -> None:
    isvc(store, "iris")

    async def scenario() -> None:
        metrics = UiMetrics(store, None, None, interval_s=0.05)
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(metrics.run(stop))
        api = ControlApi(store, logs_dir=tmp_path / "logs", ui=UiApi(store, tmp_path, metrics, keepalive_s=0.2))
        server = HttpServer(api, "127.0.0.1", 0, 1 << 20)
        await server.start()
        loop = asyncio.get_running_loop()

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"GET /apis/ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                return read_until(sock, b": keep-alive")

        data = await loop.run_in_executor(None, client)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"200 OK" in head and b"content-type: text/event-stream" in head and b"chunked" in head
        assert body.count(b"event: tick") >= 2 and b'"default/iris":{"rps":0.0' in body
        for _ in range(100):  # the server saw the client leave: its subscription is gone
            if metrics.subscribers == 0 and not server.connections:
                break
            await asyncio.sleep(0.02)
        assert metrics.subscribers == 0 and not server.connections

        # a stream still open when the server stops is ended at once, not waited for
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /apis/ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await reader.readuntil(b"event: tick")
        started = loop.time()
        assert await server.shutdown(5.0) == 0
        assert loop.time() - started < 1.0 and metrics.subscribers == 0
        assert (await reader.read()).endswith(b"")  # closed
        writer.close()
        stop.set()
        await sampler

    asyncio.run(scenario())


# -- the gate ------------------------------------------------------------------------------------------
def request(method: str, path: str, query: str = "", **headers: str) -> Request:
    return Request(method, path, {name.replace("_", "-").lower(): value for name, value in headers.items()},
                   query=query)


def test_loopback_asks_nothing_but_refuses_foreign_origins_and_hosts() -> None:
    auth = Auth(None, "127.0.0.1")
    assert auth.check(request("GET", "/apis/isvc", host="127.0.0.1:8400")) is None
    assert auth.check(request("POST", "/apis/apply", host="localhost:8400")) is None  # the CLI: no Origin
    assert auth.check(request("POST", "/apis/apply", host="127.0.0.1:8400", origin="http://127.0.0.1:8400")) is None
    refused = auth.check(request("POST", "/apis/apply", host="127.0.0.1:8400", origin="http://evil.example"))
    assert refused is not None and refused.status == 403 and b"evil.example" in refused.body
    rebound = auth.check(request("GET", "/apis/isvc", host="evil.example:8400"))
    assert rebound is not None and rebound.status == 403 and b"not a loopback name" in rebound.body
    assert [is_loopback(host) for host in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1")] == [
        True, True, True, False, False]


def test_beyond_loopback_the_token_is_required_as_bearer_or_cookie_with_csrf_checks() -> None:
    auth = Auth("s3cret", "0.0.0.0")
    host = {"host": "plane.lan:8400"}
    for path in ("/", "/ui/app.js", "/healthz"):  # the page must load to show its token form
        assert auth.check(request("GET", path, **host)) is None
    missing = auth.check(request("GET", "/apis/isvc", **host))
    assert missing.status == 401 and b"requires a token" in missing.body
    assert ("www-authenticate", 'Bearer realm="shipyard"') in missing.headers
    assert auth.check(request("GET", "/apis/isvc", authorization="Bearer s3cret", **host)) is None
    assert auth.check(request("POST", "/apis/apply", authorization="Bearer s3cret", **host)) is None
    assert auth.check(request("GET", "/apis/isvc", authorization="Bearer nope", **host)).status == 401
    assert auth.check(request("GET", "/apis/isvc", cookie="shipyard_token=nope", **host)).status == 401
    assert auth.check(request("GET", "/apis/isvc", cookie="a=b; shipyard_token=s3cret", **host)) is None
    no_header = auth.check(request("POST", "/apis/apply", cookie="shipyard_token=s3cret", **host))
    assert no_header.status == 403 and b"X-Shipyard-Request" in no_header.body
    csrf = {"cookie": "shipyard_token=s3cret", "x_shipyard_request": "1", **host}
    assert auth.check(request("DELETE", "/apis/isvc/default/x", **csrf)) is None
    assert auth.check(request("POST", "/apis/apply", origin="http://plane.lan:8400", **csrf)) is None
    foreign = auth.check(request("POST", "/apis/apply", origin="http://evil.example", **csrf))
    assert foreign.status == 403 and b"Origin" in foreign.body
    assert auth.check(request("POST", "/apis/apply", origin="http://plane.lan:9999", **csrf)).status == 403

    login = auth.check(request("GET", "/", "token=s3cret", **host))
    assert login.status == 303 and ("location", "/") in login.headers
    cookie = dict(login.headers)["set-cookie"]
    assert cookie.startswith("shipyard_token=s3cret;") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    wrong = auth.check(request("GET", "/", "token=guess", **host))
    assert wrong.status == 303 and ("location", "/?invalid_token=1") in wrong.headers
    assert "set-cookie" not in dict(wrong.headers)


# -- graph step counters ---------------------------------------------------------------------------------
def test_the_gateway_counts_requests_and_errors_per_node_and_step(tmp_path: Path) -> None:
    graphs = GraphTable(lambda: "http://127.0.0.1:9", tmp_path / "graphs")
    spec = {"nodes": {"root": {"routerType": "Sequence", "steps": [
        {"name": "first", "serviceName": "a"}, {"name": "sub", "nodeName": "inner"},
        {"name": "last", "serviceName": "c", "dependency": "Soft"}]},
        "inner": {"routerType": "Sequence", "steps": [{"name": "b", "serviceName": "b"}]}}}
    resource = SimpleNamespace(namespace="default", name="g", uid="u1", generation=1, spec=spec, deleting=False)
    graphs.update([resource])
    assert graphs.step_stats("default", "g") == {name: {"requests": 0, "errors": 0}
                                                 for name in ("root/first", "root/sub", "root/last", "inner/b")}

    async def call(namespace: str, step: Any, body: Any, protocol: str, headers: Any, timeout: Any) -> StepResult:
        return StepResult(500, {"error": "boom"}) if step.service_name == "c" else StepResult(200, {"predictions": [1]})

    graphs.call = call  # type: ignore[method-assign]
    runtime = graphs.lookup("default", "g")

    async def twice() -> None:
        for _ in range(2):
            await graphs.run(runtime, {"instances": [[1]]}, "v1", {}, "r")

    asyncio.run(twice())
    assert graphs.step_stats("default", "g") == {"root/first": {"requests": 2, "errors": 0},
                                                 "root/sub": {"requests": 2, "errors": 0},
                                                 "root/last": {"requests": 2, "errors": 2},
                                                 "inner/b": {"requests": 2, "errors": 0}}
    graphs.update([SimpleNamespace(**{**vars(resource), "generation": 2})])  # a new spec keeps the counts
    assert graphs.step_stats("default", "g")["root/first"]["requests"] == 2
    graphs.forget("default", "g")
    assert graphs.step_stats("default", "g") is None
