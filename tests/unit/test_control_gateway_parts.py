"""The gateway's pieces in process: route tables, the weighted split, tags and hosts, the answer
window, and how shadow answers are compared and counted."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import msgspec
import pytest

from shipyard.control.gateway.observe import Observer, percentile
from shipyard.control.gateway.routing import Pool, Replica, RouteTable, RouteTableError, Router, parse_host
from shipyard.control.gateway.shadow import Answer, Mirror, ShadowJob, compare_grpc, compare_rest
from shipyard.protocol.binary import tensor_to_bytes
from shipyard.protocol.errors import NotFound, NotReady
from shipyard.protocol.proto import inference_pb2 as pb

KEY = ("default", "iris")


def replica(port: int) -> dict[str, str]:
    return {"http": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{port + 1}"}


def table(*backends: dict[str, Any], version: int = 1, **extra: Any) -> dict[str, Any]:
    return {"isvc": "iris", "namespace": "default", "protocol": "v2", "backends": list(backends),
            "shadow": None, "version": version, **extra}


def backend(revision: str, percent: int, tags: tuple[str, ...] = (), ports: tuple[int, ...] = (9000,)) -> dict[str, Any]:
    return {"revision": revision, "percent": percent, "tags": list(tags), "replicas": [replica(p) for p in ports]}


# -- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(backends={}), "'backends' must be a list"),
    (lambda t: t["backends"][0].update(percent=120), "backends[0].percent: expected an integer from 0 to 100, got 120"),
    (lambda t: t["backends"][0].update(percent="20"), "backends[0].percent"),
    (lambda t: t["backends"][0].update(percent=True), "backends[0].percent"),
    (lambda t: t["backends"][0].update(revision=""), "backends[0].revision: expected a revision name"),
    (lambda t: t["backends"][0].update(tags="latest"), "backends[0].tags: expected a list of tag names"),
    (lambda t: t["backends"][0].update(replicas=[{"http": "127.0.0.1:80"}]), "backends[0].replicas[0].http: expected an http:// URL"),
    (lambda t: t["backends"][0].update(replicas=[{"grpc": "nowhere"}]), "backends[0].replicas[0].grpc: expected HOST:PORT"),
    (lambda t: t["backends"][0].update(replicas=[{}]), "backends[0].replicas[0]: needs an 'http' URL or a 'grpc' address"),
    (lambda t: t["backends"].append(backend("a", 0)), "revision 'a' appears in more than one backend"),
    (lambda t: t.update(version="7"), "'version' must be an integer"),
    (lambda t: t.update(timeout_s=0), "'timeout_s' must be a positive number of seconds, got 0"),
    (lambda t: t.update(isvc="other"), "'isvc' is 'other' but the table is stored under 'iris'"),
    (lambda t: t.update(shadow={"revision": "s", "percent": -1, "replicas": []}), "shadow.percent"),
])
def test_bad_tables_are_refused_naming_the_field(change, message):
    raw = table(backend("a", 100))
    change(raw)
    with pytest.raises(RouteTableError) as raised:
        RouteTable.parse(KEY, raw)
    assert message in str(raised.value) and "route table default/iris" in str(raised.value)


def test_a_table_parses_with_defaults():
    parsed = RouteTable.parse(KEY, {"backends": [backend("a", 100, ("latest",))],
                                    "shadow": {"revision": "s", "replicas": [replica(9100)]}})
    assert parsed.timeout_s == 300.0 and parsed.version == 0 and parsed.shadow.percent == 100
    assert parsed.backends[0].pool.replicas == (Replica("http://127.0.0.1:9000", "127.0.0.1:9001"),)
    assert parsed.revisions() == {"default/a", "default/s"}
    assert parsed.describe() == "a (100%, latest)"


# -- the weighted split ----------------------------------------------------------------------------
def picks(parsed: RouteTable, count: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(count):
        revision = parsed.choose().revision
        seen[revision] = seen.get(revision, 0) + 1
    return seen


def test_split_is_exact_over_every_hundred_requests():
    parsed = RouteTable.parse(KEY, table(backend("canary", 20), backend("stable", 80)))
    for _ in range(10):
        assert picks(parsed, 100) == {"canary": 20, "stable": 80}
    three = RouteTable.parse(KEY, table(backend("a", 1), backend("b", 33), backend("c", 66)))
    assert picks(three, 300) == {"a": 3, "b": 99, "c": 198}


def test_split_is_smooth_not_bursty():
    parsed = RouteTable.parse(KEY, table(backend("canary", 20), backend("stable", 80)))
    sequence = [parsed.choose().revision for _ in range(50)]
    runs = "".join("c" if r == "canary" else "s" for r in sequence)
    assert "cc" not in runs and "sssss" not in runs  # a canary request every fifth, never in bursts


def test_backends_without_replicas_or_share_take_no_untagged_traffic():
    parsed = RouteTable.parse(KEY, table(backend("dark", 0, ("latest",)), backend("starting", 50, ports=()),
                                         backend("stable", 50, ("prev",))))
    assert picks(parsed, 50) == {"stable": 50}
    assert parsed.choose("latest").revision == "dark" and parsed.choose("dark").revision == "dark"
    with pytest.raises(NotReady, match="revision 'starting' of inference service 'default/iris' has no ready replica"):
        parsed.choose("starting")
    with pytest.raises(NotFound, match="'canary' is neither a revision nor a tag .* dark \\(0%, latest\\)"):
        parsed.choose("canary")
    nothing = RouteTable.parse(KEY, table(backend("dark", 0, ("latest",))))
    with pytest.raises(NotReady, match="no revision of inference service 'default/iris' takes traffic"):
        nothing.choose()
    waiting = RouteTable.parse(KEY, table(backend("starting", 100, ports=())))
    with pytest.raises(NotReady, match="has no ready replica in a revision that takes traffic yet"):
        waiting.choose()


def test_shadow_mirrors_its_percent_evenly_and_is_reachable_by_name():
    parsed = RouteTable.parse(KEY, table(backend("a", 100), shadow={"revision": "s", "percent": 30,
                                                                      "replicas": [replica(9100)]}))
    assert sum(parsed.mirror() is not None for _ in range(100)) == 30
    assert parsed.choose("s").revision == "s"
    empty = RouteTable.parse(KEY, table(backend("a", 100), shadow={"revision": "s", "replicas": []}))
    assert empty.mirror() is None


def test_pool_takes_turns_and_skips_a_replica_marked_down():
    pool = Pool("a", [Replica("http://h:1", "h:2"), Replica("http://h:3", None), Replica(None, "h:6")])
    assert [pool.next("http").http for _ in range(4)] == ["http://h:1", "http://h:3", "http://h:1", "http://h:3"]
    assert {pool.next("grpc").grpc for _ in range(4)} == {"h:2", "h:6"}
    first = pool.replicas[0]
    assert pool.next("http", exclude=first).http == "http://h:3"
    pool.mark_down(first)
    assert {pool.next("http").http for _ in range(4)} == {"http://h:3"}
    pool.mark_down(pool.replicas[1])  # all down: better to try one than to refuse
    assert pool.next("http") is not None
    assert Pool("empty", []).next("http") is None


# -- hosts, namespaces, table swaps -------------------------------------------------------------------
@pytest.mark.parametrize("host, expected", [
    ("iris.default.example.com", ("iris", "default")),
    ("Latest-Iris.team-a.svc.cluster.local:8080", ("latest-iris", "team-a")),
    ("iris.default.localhost.", ("iris", "default")),
    ("127.0.0.1:8080", None), ("[::1]:8080", None), ("::1", None), ("localhost", None),
    ("example.com", None), ("", None), (None, None),
])
def test_host_names(host, expected):
    assert parse_host(host) == expected


def test_router_swaps_tables_and_keeps_state_of_unchanged_ones():
    router = Router()
    assert router.update({KEY: table(backend("a", 20), backend("b", 80)),
                          ("team", "other"): table(backend("o", 100), isvc="other", namespace="team")}) == []
    kept = router.tables[KEY]
    kept.choose()
    router.update({KEY: table(backend("a", 20), backend("b", 80))})  # same version: same object
    assert router.tables[KEY] is kept and ("team", "other") not in router.tables
    router.update({KEY: table(backend("b", 100), version=2)})
    assert router.tables[KEY].version == 2 and not router.references("default/a") and router.references("default/b")
    router.update({KEY: table(backend("c", 100), version=2)})  # changed content under the same version
    assert router.references("default/c") and not router.references("default/b")


def test_router_keeps_the_last_good_table_when_a_new_one_is_bad():
    router = Router()
    router.update({KEY: table(backend("a", 100))})
    bad = {KEY: table(backend("a", 101), version=2)}
    problems = router.update(bad)
    assert len(problems) == 1 and "backends[0].percent" in problems[0]
    assert router.update(bad) == []  # reported once per bad version
    assert router.tables[KEY].version == 1
    assert router.update({("default", "new"): table(isvc="new", version="x")})[0].startswith("route table default/new")
    assert ("default", "new") not in router.tables


def test_router_finds_services_by_host_and_name():
    router = Router()
    router.update({KEY: table(backend("a", 100)),
                   ("team", "latest-x"): table(isvc="latest-x", namespace="team"),
                   ("team", "x"): table(isvc="x", namespace="team")})
    assert router.by_host("latest-iris.default.example.com")[1] == "latest"
    assert router.by_host("prev-iris.default.example.com")[1] == "prev"
    assert router.by_host("iris.default.example.com")[1] is None
    assert router.by_host("latest-x.team.example.com")[0].isvc == "latest-x"  # a real name wins over a tag
    assert router.by_host("canary-iris.default.example.com") is None
    assert router.find("iris", "team").key == KEY  # not in the host's namespace: the default one
    assert router.find("x", "team").key == ("team", "x")
    with pytest.raises(NotFound, match="model 'nope' is not served; namespace 'team' serves latest-x, x"):
        router.find("nope", "team")
    with pytest.raises(NotFound, match="namespace 'default' serves iris"):
        router.find("nope", "unknown-namespace")


# -- the answer window ----------------------------------------------------------------------------------
def test_observer_counts_in_flight_and_windows_answers():
    now = [1000.0]
    observer = Observer(clock=lambda: now[0])
    started = [observer.begin("a") for _ in range(3)]
    assert observer.in_flight("a") == 3 and observer.in_flight("b") == 0
    observer.end("a", started[0], ok=True)
    now[0] += 0.010
    observer.end("a", started[1], ok=False)
    assert observer.in_flight("a") == 1
    now[0] += 60
    observer.end("a", started[2], ok=True)  # 60.01 s after it began
    recent = observer.stats("a", window_s=30)
    assert (recent.requests, recent.errors, recent.in_flight) == (1, 0, 0)
    assert recent.p99_ms == pytest.approx(60_010.0)
    everything = observer.stats("a", window_s=120)
    assert (everything.requests, everything.errors, everything.error_rate) == (3, 1, pytest.approx(1 / 3))
    assert everything.p50_ms == pytest.approx(10.0)
    assert observer.stats("never", 30).requests == 0 and observer.stats("never", 30).p99_ms is None
    with pytest.raises(ValueError, match="window_s must be a positive number"):
        observer.stats("a", 0)


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.99) == 99.0 and percentile(values, 0.5) == 50.0 and percentile([7.0], 0.99) == 7.0


# -- comparing shadow answers ---------------------------------------------------------------------------
def v2(outputs: list[dict[str, Any]], **extra: Any) -> Answer:
    return Answer(200, json.dumps({"model_name": "iris", "outputs": outputs, **extra}).encode(),
                  {"content-type": "application/json"})


def test_v2_json_outputs_compare_with_tolerance_and_ignore_ids():
    live = v2([{"name": "y", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}], id="1")
    close = v2([{"name": "y", "datatype": "FP64", "shape": [2], "data": [1.000000001, 2.0]}], id="2")
    far = v2([{"name": "y", "datatype": "FP64", "shape": [2], "data": [1.0, 2.1]}], id="3")
    assert compare_rest(live, close) is None
    assert compare_rest(live, far) == "outputs.y.data[1]: 2.0 (live) vs 2.1 (shadow)"
    other_shape = v2([{"name": "y", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}])
    assert compare_rest(live, other_shape).startswith("outputs.y.shape")
    renamed = v2([{"name": "z", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}])
    assert compare_rest(live, renamed) == "outputs: keys ['y'] (live) vs ['z'] (shadow)"
    words = v2([{"name": "w", "datatype": "BYTES", "shape": [1], "data": ["a"]}])
    assert compare_rest(words, v2([{"name": "w", "datatype": "BYTES", "shape": [1], "data": ["b"]}])) is not None


def test_statuses_v1_and_encodings():
    assert compare_rest(Answer(200, b"{}"), Answer(500, b"{}")) == "status 200 (live) vs 500 (shadow)"
    assert compare_rest(Answer(400, b'{"error":"x"}'), Answer(400, b'{"error":"y"}')) is None
    v1 = Answer(200, b'{"predictions": [0.5, 1]}', {"content-type": "application/json"})
    assert compare_rest(v1, Answer(200, b'{"predictions": [0.5000001, 1]}')) is None
    assert compare_rest(v1, Answer(200, b'{"predictions": [0.5, 2]}')) == "predictions[1]: 1 (live) vs 2 (shadow)"
    gzipped = Answer(200, gzip.compress(b'{"predictions": [0.5, 1]}'), {"content-encoding": "gzip"})
    assert compare_rest(gzipped, v1) is None
    text = {"content-type": "text/plain"}
    assert compare_rest(Answer(200, b"same", text), Answer(200, b"same", text)) is None
    assert compare_rest(Answer(200, b"same", text), Answer(200, b"other", text)) == "bodies differ"


def binary_answer(values: list[float], name: str = "y") -> Answer:
    import numpy as np

    datatype, raw = tensor_to_bytes(name, np.array(values, np.float32))
    header = msgspec.json.encode({"model_name": "iris", "outputs": [
        {"name": name, "datatype": datatype, "shape": [len(values)], "parameters": {"binary_data_size": len(raw)}}]})
    return Answer(200, header + raw, {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(header))})


def test_binary_outputs_compare_by_value():
    assert compare_rest(binary_answer([1.0, 2.0]), binary_answer([1.0, 2.0])) is None
    assert "outputs.y.data[1]: 2.0 (live) vs 3.0 (shadow)" == compare_rest(binary_answer([1.0, 2.0]),
                                                                           binary_answer([1.0, 3.0]))


def test_grpc_answers_compare_status_and_outputs():
    import numpy as np

    def response(values: list[float]) -> bytes:
        message = pb.ModelInferResponse(model_name="iris", id="x")
        datatype, raw = tensor_to_bytes("y", np.array(values, np.float64))
        message.outputs.add(name="y", datatype=datatype, shape=[len(values)])
        message.raw_output_contents.append(raw)
        return message.SerializeToString()

    assert compare_grpc(Answer(0, response([1.0])), Answer(0, response([1.0 + 1e-12]))) is None
    assert compare_grpc(Answer(0, response([1.0])), Answer(0, response([4.0]))) == \
        "outputs.y.data[0]: 1.0 (live) vs 4.0 (shadow)"
    assert compare_grpc(Answer(0, b""), Answer(13, b"boom")) == "gRPC status 0 (live) vs 13 (shadow)"


# -- the mirror's queue and counts ------------------------------------------------------------------------
def test_mirror_counts_matches_mismatches_errors_skips_and_drops():
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        mirror = Mirror(workers=2, queue_size=8)
        mirror.start()
        loop = asyncio.get_running_loop()

        def job(shadow: Answer, live: Answer) -> ShadowJob:
            async def send() -> Answer:
                await asyncio.sleep(0)
                return shadow
            future = loop.create_future()
            loop.call_later(0.01, future.set_result, live)  # the live answer comes after the copy's
            return ShadowJob(KEY, "s", "rest", "/v2/models/iris/infer", send, future)

        ok = Answer(200, b'{"predictions": [1]}', latency_ms=2.0)
        assert mirror.submit(job(ok, ok))
        mirror.submit(job(Answer(200, b'{"predictions": [2]}', latency_ms=3.0), ok))
        mirror.submit(job(Answer(502, b"{}", failure="refused", server_error=True), ok))
        mirror.submit(job(ok, Answer(504, failure="timeout", server_error=True)))
        while mirror.pending():
            await asyncio.sleep(0.005)
        full = Mirror(workers=0, queue_size=1)  # nobody takes jobs: the second is dropped
        full.submit(job(ok, ok))
        assert not full.submit(job(ok, ok))
        await mirror.stop()
        return mirror.report(*KEY), full.report(*KEY)

    report, full = asyncio.run(scenario())
    assert {k: report[k] for k in ("mirrored", "matched", "mismatched", "shadow_errors", "skipped", "dropped")} == \
        {"mirrored": 3, "matched": 1, "mismatched": 1, "shadow_errors": 1, "skipped": 1, "dropped": 0}
    assert report["revision"] == "s" and report["shadow_ms"]["p99"] == 3.0
    assert [m["difference"] for m in report["last_mismatches"]] == ["predictions[0]: 1 (live) vs 2 (shadow)",
                                                                    "refused"]
    assert full["dropped"] == 1
    assert Mirror().report("default", "never") is None
