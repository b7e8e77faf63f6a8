"""Detector folders (detector.yaml), detector state across restarts, V2 scoring of requests, and the
payload logger's route through the gateway. In process, except the logger test's real HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import yaml

from shipyard.monitor.cloudevents import make_event
from shipyard.monitor.detector_folder import (
    DetectorConfigError,
    build_folder,
    is_detector_folder,
    load_folder,
    read_detector_config,
)
from shipyard.monitor.detectors import Detector, Score
from shipyard.monitor.logger import GatewayRoute, PayloadLogger, PayloadLoggers, SinkError, sink_for
from shipyard.monitor.receiver import REQUEST_TYPE, RESPONSE_TYPE, DetectorApp, build
from shipyard.monitor.state import STATE_ENV, StateFile
from shipyard.server.rest import Request


def sample(seed: int, n: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x1": rng.normal(0, 1, n) + shift, "x2": rng.normal(5, 2, n),
                         "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])})


def folder(tmp_path: Path, config: dict[str, Any], name: str = "drift", reference: pd.DataFrame | None = None) -> Path:
    path = tmp_path / name
    path.mkdir()
    (reference if reference is not None else sample(0, 500)).to_parquet(path / "reference.parquet")
    (path / "detector.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(STATE_ENV, raising=False)
    return tmp_path / "home"


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def event(kind: str, event_id: str, payload: dict[str, Any], path: str = "/") -> Request:
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "test", "content-type": "application/json",
               "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE}
    return Request("POST", path, headers, json.dumps(payload).encode())


def v1(frame: pd.DataFrame) -> dict[str, Any]:
    return {"instances": frame.astype(object).values.tolist()}


def v2(frame: pd.DataFrame, **extra: list[Any]) -> dict[str, Any]:
    inputs = [{"name": "x1", "datatype": "FP64", "shape": [len(frame)], "data": frame["x1"].tolist()},
              {"name": "x2", "datatype": "FP64", "shape": [len(frame)], "data": frame["x2"].tolist()},
              {"name": "color", "datatype": "BYTES", "shape": [len(frame)], "data": frame["color"].tolist()}]
    for name, data in extra.items():
        inputs.append({"name": name, "datatype": "INT64", "shape": [len(data)], "data": data})
    return {"inputs": inputs}


def outputs(body: bytes) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in json.loads(body)["outputs"]}


# -- detector.yaml ---------------------------------------------------------------------------------
def test_a_folder_with_every_option(tmp_path: Path) -> None:
    path = folder(tmp_path, {"detector": "drift", "reference": "reference.parquet", "window": 100, "alpha": 0.01,
                             "correction": "bh", "categorical": ["color"], "min_rows": 20,
                             "alert_url": "http://127.0.0.1:9/alerts", "state": {"path": "st/state.json",
                                                                                 "interval_s": 2}})
    assert is_detector_folder(path) and not is_detector_folder(tmp_path) and not is_detector_folder(path / "x")
    loaded = load_folder(path)
    assert loaded.name == "drift" and list(loaded.reference.columns) == ["x1", "x2", "color"]
    assert loaded.options == {"window": 100, "alpha": 0.01, "correction": "bh", "categorical": ["color"],
                              "min_rows": 20}
    assert loaded.state_path == path / "st" / "state.json"
    app = build_folder(loaded)
    assert app.detector.window == 100 and app.detector.correction == "bh" and app.model_name == "drift"
    assert app.alert_url == "http://127.0.0.1:9/alerts" and app.state_interval_s == 2
    assert load_folder(path, name="other").name == "other"


@pytest.mark.parametrize(("config", "message"), [
    ({"detector": "drift"}, "reference: is required"),
    ({"reference": "reference.parquet"}, "detector: is required"),
    ({"detector": "drift", "reference": "reference.parquet", "windw": 10}, "windw: unknown key (did you mean 'window'?)"),
    ({"detector": "drift", "reference": "reference.parquet", "window": 0}, "window = 0: expected `int` of at least 1"),
    ({"detector": "drift", "reference": "reference.parquet", "alpha": 1.5}, "alpha = 1.5"),
    ({"detector": "drift", "reference": "reference.parquet", "correction": "holm"}, "correction = 'holm'"),
    ({"detector": "drift", "reference": "reference.parquet", "state": {"interval_s": 0}}, "state.interval_s = 0"),
    ({"detector": "drift", "reference": "reference.parquet", "state": {"pth": "x"}}, "state: unknown key `pth`"),
    ({"detector": "drift", "reference": "reference.parquet", "alert_url": "ftp://x"}, "alert_url = 'ftp://x'"),
    ({"detector": "outlier", "reference": "reference.parquet", "alpha": 0.1},
     "alpha: the outlier detector has no such option (it takes method, window"),
    ({"detector": "drift", "reference": "reference.parquet", "options": {"protected": "x"}},
     "options.protected: the drift detector has no such option"),
    ({"detector": "drift", "reference": "reference.parquet", "window": 5, "options": {"window": 6}},
     "options.window: also given as the key 'window'"),
    ({"detector": "nope", "reference": "reference.parquet"}, "detector = 'nope': unknown detector"),
    ({"detector": "drift", "reference": "missing.csv"}, "reference = 'missing.csv':"),
    ({"detector": "drift", "reference": "detector.yaml"}, "use a .csv, .parquet or .npy file"),
    ({"detector": "drift", "reference": "."}, "is a folder but not a Shipyard model package"),
    ({"detector": "drift", "reference": "reference.parquet", "label_column": "y"}, "label column 'y' is not in the"),
])
def test_bad_configs_name_the_key(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    path = folder(tmp_path, config)
    with pytest.raises(DetectorConfigError, match="detector.yaml") as error:
        build_folder(load_folder(path))
    assert message in str(error.value)


def test_not_a_mapping_and_bias_without_protected(tmp_path: Path) -> None:
    path = folder(tmp_path, {})
    (path / "detector.yaml").write_text("- drift\n")
    with pytest.raises(DetectorConfigError, match="expected a mapping"):
        read_detector_config(path)
    path = folder(tmp_path, {"detector": "bias", "reference": "reference.parquet"}, name="bias")
    with pytest.raises(DetectorConfigError, match="protected"):
        build_folder(load_folder(path))
    with pytest.raises(DetectorConfigError, match="not a detector folder"):
        load_folder(tmp_path)


def test_command_line_overrides_are_checked(tmp_path: Path) -> None:
    path = folder(tmp_path, {"detector": "outlier", "reference": "reference.parquet", "method": "mahalanobis"})
    assert build_folder(load_folder(path), threshold=0.2, window=None).detector.threshold == 0.2
    with pytest.raises(DetectorConfigError, match="--alpha: the outlier detector"):
        build_folder(load_folder(path), alpha=0.1)


def package(tmp_path: Path, config: dict[str, Any], examples: list[dict[str, Any]] | None = None) -> Path:
    path = tmp_path / "iris-package"
    path.mkdir()
    (path / "shipyard.yaml").write_text(yaml.safe_dump(config))
    if examples is not None:
        (path / "examples.yaml").write_text(yaml.safe_dump(examples))
    return path


def test_reference_from_a_package_reference_file(tmp_path: Path) -> None:
    pkg = package(tmp_path, {"format": "sklearn", "artifact": "model.joblib", "reference": "data/sample.npy",
                             "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 2],
                                         "columns": ["sepal", {"name": "petal", "min": 0}]}]})
    (pkg / "data").mkdir()
    np.save(pkg / "data" / "sample.npy", np.random.default_rng(0).normal(size=(200, 2)))
    path = folder(tmp_path, {"detector": "outlier", "reference": "../iris-package"})
    loaded = load_folder(path)
    assert list(loaded.reference.columns) == ["sepal", "petal"] and len(loaded.reference) == 200
    assert loaded.reference_source.endswith("data/sample.npy") and loaded.warnings == []
    (pkg / "data" / "sample.npy").unlink()
    with pytest.raises(DetectorConfigError, match=r"shipyard.yaml: reference = 'data/sample.npy'.*does not exist"):
        load_folder(path)


def test_reference_from_a_package_examples(tmp_path: Path) -> None:
    package(tmp_path, {"format": "sklearn", "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 2],
                                                       "columns": ["a", "b"]}]},
            [{"name": "one", "inputs": {"input-0": [[1.0, 2.0], [3.0, 4.0]]}},
             {"name": "two", "inputs": {"input-0": [[5.0, 6.0]]}}])
    path = folder(tmp_path, {"detector": "drift", "reference": str(tmp_path / "iris-package")})
    loaded = load_folder(path)
    assert loaded.reference.to_dict("list") == {"a": [1.0, 3.0, 5.0], "b": [2.0, 4.0, 6.0]}
    assert "too few" in loaded.warnings[0] and "examples.yaml" in loaded.reference_source
    (tmp_path / "iris-package" / "examples.yaml").unlink()
    with pytest.raises(DetectorConfigError, match="declares no `reference:`"):
        load_folder(path)


def test_state_path_choices(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder(tmp_path, {"detector": "drift", "reference": "reference.parquet", "name": "watch"})
    assert load_folder(path).state_path == home / "monitor" / "watch" / "state.json"
    assert load_folder(path, name="svc").state_path == home / "monitor" / "svc" / "state.json"
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "env-state.json"))
    assert load_folder(path).state_path == tmp_path / "env-state.json"
    assert load_folder(path, state_path=tmp_path / "flag.json").state_path == tmp_path / "flag.json"
    (path / "detector.yaml").write_text(yaml.safe_dump({"detector": "drift", "reference": "reference.parquet",
                                                        "state": False}))
    assert load_folder(path).state_path is None


# -- state across restarts -------------------------------------------------------------------------
def test_drift_window_counters_and_alerts_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    reference = sample(0, 1000)
    app = build("drift", reference, state_path=state, window=100, min_rows=50)
    assert run(app(event("request", "a", v1(sample(1, 60, shift=2.0))))).status == 200
    assert run(app(event("request", "b", v1(sample(2, 10, shift=2.0))))).status == 200
    assert app.rows_seen == 70 and len(app.detector._window()) == 70
    assert run(app.save_state()) is True and run(app.save_state()) is False  # nothing changed since
    assert not list(tmp_path.glob(".state.json.*"))  # the temporary file was renamed

    again = build("drift", reference, state_path=state, window=100, min_rows=50)
    assert again.rows_seen == 70 and again.detector.rows_seen == 70
    assert again.detector._window().equals(app.detector._window())
    metrics = run(again(Request("GET", "/metrics"))).body.decode()
    assert 'shipyard_detector_rows_total{detector="drift"} 70.0' in metrics
    assert 'shipyard_detector_alerts_total{detector="drift",statistic="drift"} 1.0' in metrics
    assert 'shipyard_detector_score{detector="drift",feature="_all",statistic="drift"} 1.0' in metrics
    # still drifted after the restart: the alert in progress does not fire again
    answer = json.loads(run(again(event("request", "c", v1(sample(3, 5, shift=2.0))))).body)
    assert answer["alerts"] == [] and next(s for s in answer["scores"] if s["metric"] == "drift"
                                           and s["labels"]["feature"] == "_all")["value"] == 1.0

    # another reference, or other options: the state is not theirs
    other = build("drift", sample(9, 1000), state_path=state, window=100, min_rows=50)
    assert other.rows_seen == 0
    assert build("drift", reference, state_path=state, window=50, min_rows=50).rows_seen == 0


def test_bias_pairs_and_feedback_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "bias.json"
    reference = pd.DataFrame({"age": [30.0, 40.0] * 10, "sex": ["f", "m"] * 10})
    options = dict(protected="sex", min_rows=2)
    app = build("bias", reference, state_path=state, **options)
    rows = {"instances": [{"age": 30, "sex": "f"}, {"age": 40, "sex": "m"}]}
    for i in range(2):
        run(app(event("request", f"r{i}", rows)))
        run(app(event("response", f"r{i}", {"predictions": [1, 0]})))
    run(app(event("request", "waiting", rows)))  # its response comes after the restart
    run(app.save_state())

    again = build("bias", reference, state_path=state, **options)
    assert list(again._pending) == ["waiting"]
    answer = json.loads(run(again(event("response", "waiting", {"predictions": [1, 1]}))).body)
    assert answer["rows"] == 2
    feedback = run(again(Request("POST", "/feedback", {}, json.dumps({"id": "r0", "label": [1, 1]}).encode())))
    assert feedback.status == 200, feedback.body
    scores = {(s["metric"], s["labels"].get("group")): s["value"] for s in json.loads(feedback.body)["scores"]}
    assert scores[("rows", "f")] == 3 and scores[("true_positive_rate", "m")] == 0.0


def test_outlier_flags_survive_and_bad_state_files_start_afresh(tmp_path: Path, caplog) -> None:
    state = tmp_path / "outlier.json"
    reference = pd.DataFrame(np.random.default_rng(0).normal(size=(300, 2)), columns=["a", "b"])
    app = build("outlier", reference, state_path=state, window=20, min_rows=5, method="mahalanobis")
    run(app(event("request", "x", {"instances": [[9.0, 9.0]] * 4 + [[0.0, 0.0]] * 6})))
    run(app.save_state())
    again = build("outlier", reference, state_path=state, window=20, min_rows=5, method="mahalanobis")
    assert list(again.detector._flags) == [True] * 4 + [False] * 6

    state.write_text("{not json")
    assert build("outlier", reference, state_path=state, window=20, min_rows=5, method="mahalanobis").rows_seen == 0
    assert "is not JSON" in caplog.text
    state.write_text(json.dumps({"version": 1, "fingerprint": again.fingerprint, "detector": {"flags": 3}}))
    fresh = build("outlier", reference, state_path=state, window=20, min_rows=5, method="mahalanobis")
    assert fresh.rows_seen == 0 and list(fresh.detector._flags) == []
    assert "does not fit this detector" in caplog.text


def test_state_file_is_replaced_whole(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "deep" / "state.json")
    assert store.load() is None
    store.save({"a": 1})
    store.save({"a": 2})
    assert store.load() == {"a": 2, "version": 1}
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["state.json"]


# -- scoring requests (V2 infer, V1 predict) -------------------------------------------------------
def test_v2_infer_scores_drift_without_touching_the_window(tmp_path: Path) -> None:
    app = build("drift", sample(0, 1000), name="drift-svc", window=100)
    same = run(app(Request("POST", "/v2/models/drift-svc/infer", {}, json.dumps(v2(sample(1, 200))).encode())))
    assert same.status == 200, same.body
    answer = outputs(same.body)
    assert answer["is_drift"] == [False] and answer["feature"] == ["x1", "x2", "color"]
    assert all(p > 0.05 for p in answer["p_value_corrected"]) and answer["threshold"] == [0.05]
    shifted = run(app(Request("POST", "/v2/models/drift-svc/versions/1/infer", {},
                              json.dumps(v2(sample(2, 200, shift=1.0))).encode())))
    answer = outputs(shifted.body)
    assert answer["is_drift"] == [True] and answer["drift"] == [True, False, False]
    assert app.rows_seen == 0 and not app.detector._rows  # scoring is not traffic
    # only the outputs asked for
    body = {**v2(sample(2, 50)), "outputs": [{"name": "is_drift"}]}
    answer = json.loads(run(app(Request("POST", "/v2/models/drift-svc/infer", {}, json.dumps(body).encode()))).body)
    assert [o["name"] for o in answer["outputs"]] == ["is_drift"] and answer["model_name"] == "drift-svc"
    # V1, as Alibi Detect answers
    v1_answer = json.loads(run(app(Request("POST", "/v1/models/drift-svc:predict", {},
                                           json.dumps(v1(sample(2, 200, shift=1.0))).encode()))).body)
    assert v1_answer["data"]["is_drift"] == [True] and v1_answer["meta"] == {"name": "drift-svc", "detector": "drift"}


def test_v2_infer_scores_outliers_and_bias() -> None:
    reference = pd.DataFrame(np.random.default_rng(0).normal(size=(300, 2)), columns=["a", "b"])
    app = build("outlier", reference, method="mahalanobis")
    rows = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [3, 2], "data": [0, 0, 8, 8, 0.1, 0]}]}
    answer = outputs(run(app(Request("POST", "/v2/models/outlier/infer", {}, json.dumps(rows).encode()))).body)
    assert answer["is_outlier"] == [False, True, False] and len(answer["outlier_score"]) == 3
    assert answer["outlier_rate"] == [pytest.approx(1 / 3)]

    bias = build("bias", pd.DataFrame({"age": [30.0, 40.0] * 5, "sex": ["f", "m"] * 5}), protected="sex")
    body = {"inputs": [{"name": "age", "datatype": "FP64", "shape": [4], "data": [30, 31, 40, 41]},
                       {"name": "sex", "datatype": "BYTES", "shape": [4], "data": ["f", "f", "m", "m"]},
                       {"name": "prediction", "datatype": "INT64", "shape": [4], "data": [1, 1, 1, 0]},
                       {"name": "label", "datatype": "INT64", "shape": [4], "data": [1, 1, 1, 1]}]}
    answer = outputs(run(bias(Request("POST", "/v2/models/bias/infer", {}, json.dumps(body).encode()))).body)
    assert answer["group"] == ["f", "m"] and answer["positive_rate"] == [1.0, 0.5]
    assert answer["demographic_parity_difference"] == [0.5] and answer["equal_opportunity_difference"] == [0.5]
    assert answer["is_biased"] == [True] and answer["rows"] == [2, 2]
    no_predictions = {"inputs": body["inputs"][:2]}
    refused = run(bias(Request("POST", "/v2/models/bias/infer", {}, json.dumps(no_predictions).encode())))
    assert refused.status == 400 and "prediction" in json.loads(refused.body)["error"]


class MeanDetector(Detector):
    name = "mean"

    def update(self, batch, predictions=None, event_id=None):
        return self._record([Score("mean", float(batch["f0"].mean()), {"feature": "f0"})])


def test_protocol_routes_and_errors() -> None:
    app = build("drift", sample(0, 300), name="drift")
    get = lambda path: run(app(Request("GET", path)))  # noqa: E731
    assert json.loads(get("/v2/health/live").body) == {"live": True}
    assert json.loads(get("/v2/health/ready").body) == {"ready": True}
    assert json.loads(get("/v2/models/drift/ready").body) == {"name": "drift", "ready": True}
    assert json.loads(get("/v1/models/drift").body) == {"name": "drift", "ready": True}
    metadata = json.loads(get("/v2/models/drift").body)
    assert [i["datatype"] for i in metadata["inputs"]] == ["FP64", "FP64", "BYTES"]
    assert "p_value" in [o["name"] for o in metadata["outputs"]]
    assert get("/v2/models/other/ready").status == 404
    assert b"serves 'drift'" in get("/v2/models/other").body
    assert get("/v2/models/drift/infer").status == 405
    assert get("/v2/nothing").status == 404
    bad = run(app(Request("POST", "/v2/models/drift/infer", {}, b'{"inputs": [{"name": "x1"}]}')))
    assert bad.status == 400
    wrong = {"inputs": [{"name": "t", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    bad = run(app(Request("POST", "/v2/models/drift/infer", {}, json.dumps(wrong).encode())))
    assert bad.status == 400 and b"shape [n, 3]" in bad.body
    unknown = {**v2(sample(1, 5)), "outputs": [{"name": "nope"}]}
    bad = run(app(Request("POST", "/v2/models/drift/infer", {}, json.dumps(unknown).encode())))
    assert bad.status == 400 and b"unknown output(s) nope" in bad.body
    # a CloudEvent is an event whatever its path (a logger URL may carry one)
    answer = run(app(event("request", "e1", v1(sample(1, 5)), path="/v2/models/drift/infer")))
    assert answer.status == 200 and json.loads(answer.body)["rows"] == 5 and app.rows_seen == 5
    answer = run(app(event("request", "e2", v1(sample(1, 5)), path="/some/logger/path")))
    assert answer.status == 200 and app.rows_seen == 10
    # a custom detector without evaluate: events only
    custom = DetectorApp(MeanDetector())
    custom.detector.fit(np.zeros((3, 1)))
    body = {"inputs": [{"name": "f0", "datatype": "FP64", "shape": [2], "data": [1, 2]}]}
    refused = run(custom(Request("POST", "/v2/models/mean/infer", {}, json.dumps(body).encode())))
    assert refused.status == 400 and b"does not score requests on their own" in refused.body


# -- the payload logger through the gateway --------------------------------------------------------
class Recorder:
    """A real HTTP server recording the Host header and path of each POST."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                recorder.seen.append((self.headers.get("host", ""), self.path, {k.lower(): v for k, v in
                                                                                 self.headers.items()}))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.server.shutdown()


def test_gateway_route_decides_per_host() -> None:
    served = {"drift.default.mycorp.io"}
    base: list[str | None] = ["http://127.0.0.1:8080"]
    route = GatewayRoute(lambda: base[0], lambda host: host in served)
    assert route.resolve("http://drift.default.example.com/") == ("http://127.0.0.1:8080/",
                                                                   {"host": "drift.default.example.com"})
    assert route.resolve("http://drift.prod.svc.cluster.local:80/events?x=1") == (
        "http://127.0.0.1:8080/events?x=1", {"host": "drift.prod.svc.cluster.local:80"})
    assert route.resolve("http://drift.default.mycorp.io/")[1] == {"host": "drift.default.mycorp.io"}
    for direct in ("http://127.0.0.1:9000/", "http://localhost:9000/", "http://hooks.other.org/x",
                   "http://receiver:8080/"):
        assert route.resolve(direct) is None
    base[0] = None
    with pytest.raises(SinkError, match="not listening yet"):
        route.resolve("http://drift.default.example.com/")


def test_the_logger_posts_to_the_gateway_with_the_service_host(tmp_path: Path, recorder: Recorder) -> None:
    loggers = PayloadLoggers(tmp_path / "spool", fsync=False)
    key = ("default", "iris", "http://drift.default.svc.cluster.local/events")
    loggers.sync({key})
    loggers.route = GatewayRoute(lambda: recorder.url, lambda host: False)  # set after the logger opened
    logger = loggers.get(*key)
    assert logger is not None
    logger.log(make_event("request", "id-1", b'{"instances": [[1]]}', "application/json", namespace="default",
                          isvc="iris", endpoint="iris-predictor-00001"))
    assert logger.flush(10)
    loggers.close()
    ((host, path, headers),) = recorder.seen
    assert host == "drift.default.svc.cluster.local" and path == "/events"
    assert headers["ce-id"] == "id-1" and headers["ce-type"] == REQUEST_TYPE

    direct = PayloadLogger(sink_for(recorder.url + "/direct", route=GatewayRoute(lambda: "http://unused:1",
                                                                                  lambda host: True)),
                           tmp_path / "spool2", fsync=False)
    direct.log(make_event("response", "id-2", b"{}", "application/json", namespace="default", isvc="iris",
                          endpoint="e"))
    assert direct.flush(10)
    direct.close()
    assert recorder.seen[-1][:2] == (recorder.url.removeprefix("http://"), "/direct")
