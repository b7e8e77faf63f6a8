"""Proof of an InferenceService's components with real processes through ``shipyard up``, traced.

One plane exporting its spans (and its replicas') to a real OTLP receiver serves three services:

- ``shx``: a scikit-learn predictor (V2) with ``spec.explainer`` of the ``shap`` format (a folder
  with background.csv and a small ``explainer:`` section). ``/explain`` and V1 ``:explain`` through
  the gateway reach the explainer's replica, whose Kernel SHAP attributions add up to the
  predictor's outputs; ``/infer`` still reaches the predictor.
- ``trees``: a gradient-boosted predictor without an explainer, which explains itself
  (TreeExplainer, exact).
- ``tft``: a transformer (model.py with preprocess/postprocess) in front of a predictor; one
  request with a traceparent gives one trace: gateway → transformer → gateway → predictor
  (queue, predict), each span the child of the one before, by span id.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Iterator

import httpx
import joblib
import numpy as np
import pytest

from conftest import write_custom_model
from otlp_receiver import OtlpReceiver, Span, by_name, children, new_traceparent
from planeproc import PlaneProcess, isvc, kill_replicas

pytestmark = pytest.mark.integration

pytest.importorskip("shap", reason="explanations need shap: pip install 'shipyard[explain]'")

GATEWAY = "shipyard-gateway"
FEATURES = ["age", "income", "tenure", "score"]

#: The transformer doubles the inputs and shifts the predictor's answer by 1000, so both visibly ran.
TRANSFORMER = """
import numpy as np

class Model:
    def preprocess(self, inputs, parameters):
        return {"input-0": np.asarray(inputs["input-0"], dtype=np.float64) * 2}

    def postprocess(self, outputs):
        return {"output-0": np.asarray(outputs["predict"], dtype=np.float64) + 1000}
"""


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_regression

    return make_regression(160, len(FEATURES), noise=0.5, random_state=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory, data) -> dict[str, Path]:
    """The artifacts: an SVR (a black box: Kernel SHAP), its background folder, a tree model and a transformer."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.svm import SVR

    features, target = data
    root = tmp_path_factory.mktemp("components")
    paths = {"root": root}
    black_box = root / "svr"
    black_box.mkdir()
    joblib.dump(SVR(C=50.0).fit(features, target), black_box / "model.joblib")
    paths["svr"] = black_box
    trees = root / "gbr"
    trees.mkdir()
    joblib.dump(GradientBoostingRegressor(n_estimators=25, max_depth=3, random_state=0).fit(features, target),
                trees / "model.joblib")
    paths["gbr"] = trees
    background = root / "svr-background"
    background.mkdir()
    np.savetxt(background / "background.csv", features[:60], delimiter=",", header=",".join(FEATURES), comments="")
    # 4 features: Kernel SHAP enumerates all 14 coalitions, x 20 background rows = 280 rows per explained row
    (background / "shipyard.yaml").write_text(textwrap.dedent("""
        name: svr-background
        explainer:
          background: background.csv
          max_background_rows: 20
          input_name: input-0
    """))
    paths["background"] = background
    paths["transformer"] = write_custom_model(root / "transformer", TRANSFORMER)
    return paths


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def plane(receiver, models) -> Iterator[PlaneProcess]:
    """``shipyard up`` traced into ``receiver`` (its replicas inherit the environment), serving the
    three services, all Ready."""
    root = models["root"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in receiver.env(delay_ms=100).items():  # PlaneProcess passes its environment on
            patch.setenv(key, value)
        patch.delenv("OTEL_SERVICE_NAME", raising=False)
        process = PlaneProcess(root / "home")
    try:
        process.wait_up()
        explained = isvc("shx", models["svr"], model={"protocolVersion": "v2"})
        explained["spec"]["explainer"] = {"model": {"modelFormat": {"name": "shap"},
                                                    "storageUri": str(models["background"])}}
        transformed = isvc("tft", models["gbr"], model={"protocolVersion": "v2"})
        transformed["spec"]["transformer"] = {"model": {"modelFormat": {"name": "custom"},
                                                        "storageUri": str(models["transformer"])}}
        process.apply(explained, isvc("trees", models["gbr"], model={"protocolVersion": "v2"}), transformed)
        for name in ("shx", "trees", "tft"):
            process.wait_ready(name, timeout=180)
        yield process
    finally:
        process.stop()
        for name in ("svr", "gbr", "background", "transformer"):
            kill_replicas(str(models[name]))


def v2_body(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}]}


def post(url: str, body: Any, **headers: str) -> httpx.Response:
    answer = httpx.post(url, json=body, headers=headers, timeout=120)
    assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text}"
    return answer


def reproduced(answer: dict[str, Any]) -> np.ndarray:
    """Per row: the attributions' sum plus the base value (one output)."""
    values, base = np.asarray(answer["attributions"], dtype=np.float64), np.asarray(answer["base_values"])
    assert values.ndim == 2 and base.shape == (1,), (values.shape, base.shape)
    return values.sum(axis=1) + base[0]


def close_to(got: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


# -- explainers ------------------------------------------------------------------------------------


def test_explainer_component_is_ready_with_its_own_revision(plane):
    status = plane.describe("shx")["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["ExplainerReady"] == "True" and conditions["Ready"] == "True", status["conditions"]
    explainer = status["components"]["explainer"]
    assert explainer["latestReadyRevision"] == "shx-explainer-00001"
    assert explainer["url"] == "http://shx-explainer.default.example.com"
    assert status["components"]["predictor"]["latestReadyRevision"] == "shx-predictor-00001"
    assert "transformer" not in status["components"]


def test_v2_explain_through_the_gateway_reaches_the_explainer_and_adds_up(plane, models, data):
    features, _ = data
    rows = features[[70, 90, 130]]
    answer = post(f"{plane.gateway}/v2/models/shx/explain", v2_body(rows))
    assert answer.headers["x-shipyard-revision"] == "shx-explainer-00001"
    body = answer.json()
    assert body["model_name"] == "shx" and body["explainer"] == "shap" and body["algorithm"] == "kernel"
    assert body["output"] == "prediction" and body["output_name"] == "predict"
    assert body["feature_names"] == FEATURES  # the background's header
    assert np.asarray(body["attributions"]).shape == (3, len(FEATURES))

    # what the predictor answers for those rows, through the gateway and as the model itself computes it
    inferred = post(f"{plane.gateway}/v2/models/shx/infer", v2_body(rows))
    assert inferred.headers["x-shipyard-revision"] == "shx-predictor-00001"  # /infer is not the explainer's
    predicted = np.asarray(inferred.json()["outputs"][0]["data"], dtype=np.float64)
    local = joblib.load(models["svr"] / "model.joblib").predict(rows)
    np.testing.assert_allclose(predicted, local, rtol=1e-9)
    np.testing.assert_allclose(body["predictions"], predicted, rtol=1e-9)
    close_to(reproduced(body), predicted, 1e-3)
    assert "explanations" not in body


def test_v1_explain_through_the_gateway_adds_up_with_kserve_explanations(plane, data):
    features, _ = data
    rows = features[[5, 150]]
    answer = post(f"{plane.gateway}/v1/models/shx:explain", {"instances": rows.tolist()})
    assert answer.headers["x-shipyard-revision"] == "shx-explainer-00001"
    body = answer.json()
    assert body["algorithm"] == "kernel"
    v1 = post(f"{plane.gateway}/v1/models/shx:predict", {"instances": rows.tolist()})
    assert v1.headers["x-shipyard-revision"] == "shx-predictor-00001"
    predicted = np.asarray(v1.json()["predictions"], dtype=np.float64)
    np.testing.assert_allclose(body["predictions"], predicted, rtol=1e-9)
    close_to(reproduced(body), predicted, 1e-3)
    assert len(body["explanations"]) == 2
    first = body["explanations"][0]
    assert first["attributions"] == body["attributions"][0] and first["base_values"] == body["base_values"]


def test_a_tree_predictor_without_an_explainer_explains_itself_through_the_gateway(plane, models, data):
    features, _ = data
    rows = features[[1, 2, 3, 100, 159]]
    answer = post(f"{plane.gateway}/v2/models/trees/explain", v2_body(rows))
    assert answer.headers["x-shipyard-revision"] == "trees-predictor-00001"
    body = answer.json()
    assert body["algorithm"] == "tree" and body["output"] == "prediction"
    assert np.asarray(body["attributions"]).shape == (5, len(FEATURES))
    predicted = np.asarray(post(f"{plane.gateway}/v2/models/trees/infer", v2_body(rows)).json()["outputs"][0]["data"])
    np.testing.assert_allclose(predicted, joblib.load(models["gbr"] / "model.joblib").predict(rows), rtol=1e-9)
    np.testing.assert_allclose(body["predictions"], predicted, rtol=1e-12)
    close_to(reproduced(body), predicted, 1e-5)
    v1 = post(f"{plane.gateway}/v1/models/trees:explain", {"instances": rows[:2].tolist()}).json()
    close_to(reproduced(v1), predicted[:2], 1e-5)
    status = plane.describe("trees")["status"]
    assert "explainer" not in status["components"]
    assert not any(c["type"] == "ExplainerReady" for c in status["conditions"])


# -- one trace across processes ------------------------------------------------------------------


def _server_spans(spans: list[Span], name: str, service: str) -> list[Span]:
    return [s for s in by_name(spans, name, service) if s.kind == "server"]


def _describe(spans: list[Span]) -> list[tuple[str, str, str, str, str]]:
    return [(s.service, s.name, s.kind, s.span_id, s.parent_id) for s in spans]


def test_one_trace_runs_gateway_transformer_gateway_predictor(plane, receiver, models, data):
    features, _ = data
    rows = features[[7]]
    traceparent, trace_id, caller = new_traceparent()
    answer = post(f"{plane.gateway}/v2/models/tft/infer", v2_body(rows), traceparent=traceparent)
    assert answer.headers["x-shipyard-revision"] == "tft-transformer-00001"
    output = answer.json()["outputs"][0]
    expected = joblib.load(models["gbr"] / "model.joblib").predict(rows * 2) + 1000
    assert output["name"] == "output-0"
    np.testing.assert_allclose(output["data"], expected, rtol=1e-9)  # both the transformer and the predictor ran

    name = "POST /v2/models/tft/infer"

    def complete(spans: list[Span]) -> bool:
        return (len(_server_spans(spans, name, GATEWAY)) >= 2 and _server_spans(spans, name, "tft-transformer")
                and _server_spans(spans, name, "tft-predictor")
                and bool(by_name(spans, "predict", "tft-predictor")) and bool(by_name(spans, "queue", "tft-predictor")))

    spans = receiver.wait_for_trace(trace_id, complete)
    seen = _describe(spans)

    # 1. the gateway's span for the request: the caller's child, routed to the transformer
    [outer] = [s for s in _server_spans(spans, name, GATEWAY) if s.parent_id == caller]
    assert outer.attributes["shipyard.service"] == "default/tft"
    assert outer.attributes["shipyard.revision"] == "tft-transformer-00001", outer.attributes
    assert outer.attributes["http.response.status_code"] == 200

    # 2. the transformer replica's server span, the gateway span's child
    [transformer] = _server_spans(spans, name, "tft-transformer")
    assert transformer.parent_id == outer.span_id, seen
    assert transformer.attributes["shipyard.model"] == "tft"

    # 3. the gateway's span for the transformer's call to the predictor: a child of the transformer's
    #    server span, or of a client span under it
    under_transformer = {transformer.span_id} | {
        s.span_id for s in children(spans, transformer) if s.kind == "client" and s.service == "tft-transformer"}
    [inner] = [s for s in _server_spans(spans, name, GATEWAY) if s is not outer]
    assert inner.parent_id in under_transformer, seen
    assert inner.attributes["shipyard.revision"] == "tft-predictor-00001", inner.attributes

    # 4. the predictor replica's server span, the inner gateway span's child, with its queue and predict
    [predictor] = _server_spans(spans, name, "tft-predictor")
    assert predictor.parent_id == inner.span_id, seen
    kids = children(spans, predictor)
    queue, predict = by_name(kids, "queue"), by_name(kids, "predict")
    assert len(queue) == 1 and len(predict) == 1, seen
    assert predict[0].attributes["shipyard.rows"] == 1

    # one trace: every span of these four processes' request is in it, and the times nest
    assert {s.trace_id for s in spans} == {trace_id}
    for parent, child in ((outer, transformer), (transformer, inner), (inner, predictor)):
        assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns + 5_000_000, (parent, child)
