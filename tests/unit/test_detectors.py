"""The drift, outlier and bias detectors, the plug-in loader and the receiver's decoding (no processes)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from shipyard.monitor.detectors import BadBatch, Detector, Score, load_detector
from shipyard.monitor.detectors.bias import BiasDetector
from shipyard.monitor.detectors.drift import DriftDetector, benjamini_hochberg, bonferroni
from shipyard.monitor.detectors.outlier import OutlierDetector
from shipyard.monitor.receiver import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    BadEvent,
    DetectorApp,
    decode_predictions,
    decode_rows,
    parse_cloudevent,
)
from shipyard.server.rest import Request


def reference(seed: int = 0, n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x1": rng.normal(0, 1, n),
        "x2": rng.normal(5, 2, n),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
    })


def overall(scores: list[Score], metric: str = "drift") -> Score:
    return next(s for s in scores if s.metric == metric and s.labels.get("feature") == "_all")


# -- drift -----------------------------------------------------------------------------------------
def test_unshifted_sample_does_not_drift_and_shifted_does() -> None:
    detector = DriftDetector(window=200)
    detector.fit(reference(0))
    same = detector.update(detector.prepare(reference(1, 200)))
    assert overall(same).alert is False and overall(same).value == 0.0
    shifted = reference(2, 200)
    shifted["x2"] += 1.5
    scores = detector.update(detector.prepare(shifted))
    assert overall(scores).alert is True
    assert overall(scores).details["features"] == ["x2"]
    p = {s.labels["feature"]: s.value for s in scores if s.metric == "p_value_corrected"}
    assert p["x2"] < 0.05 and p["x1"] > 0.05
    assert {s.metric for s in scores if s.labels.get("feature") == "x1"} == {
        "ks_statistic", "p_value", "p_value_corrected", "drift"}


def test_no_scores_until_min_rows() -> None:
    detector = DriftDetector(window=100, min_rows=40)
    detector.fit(reference(0))
    assert detector.update(detector.prepare(reference(1, 39))) == []
    assert detector.metrics() == []
    assert detector.update(detector.prepare(reference(2, 1)))
    assert overall(detector.metrics()).value == 0.0


def test_sliding_window_forgets_old_rows() -> None:
    detector = DriftDetector(window=100)
    detector.fit(reference(0))
    shifted = reference(1, 100)
    shifted["x1"] += 2
    assert overall(detector.update(detector.prepare(shifted))).alert
    # 100 unshifted rows push the shifted ones out of the window
    assert not overall(detector.update(detector.prepare(reference(2, 100)))).alert


def test_chi_squared_on_categories() -> None:
    detector = DriftDetector(window=300)
    detector.fit(reference(0))
    rng = np.random.default_rng(3)
    batch = reference(3, 300)
    batch["color"] = rng.choice(["red", "green", "blue"], 300, p=[0.2, 0.3, 0.5])
    scores = detector.update(detector.prepare(batch))
    chi2 = {s.labels["feature"]: s for s in scores if s.metric == "chi2_statistic"}
    assert set(chi2) == {"color"} and chi2["color"].value > 20
    assert overall(scores).details["features"] == ["color"]
    # a category never seen in the reference is drift too
    fresh = DriftDetector(window=100)
    fresh.fit(reference(0))
    batch = reference(4, 100)
    batch.loc[:30, "color"] = "purple"
    assert overall(fresh.update(fresh.prepare(batch))).details["features"] == ["color"]


def test_numeric_column_forced_categorical() -> None:
    ref = pd.DataFrame({"code": np.repeat([1, 2, 3], 100), "x": np.arange(300.0)})
    detector = DriftDetector(window=90, categorical=["code"])
    detector.fit(ref)
    assert detector.categorical_columns == ["code"] and detector.numeric == ["x"]


def test_corrections() -> None:
    p = [0.01, 0.02, 0.03, 0.04, 0.5]
    assert bonferroni(p).tolist() == pytest.approx([0.05, 0.1, 0.15, 0.2, 1.0])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.5])
    assert benjamini_hochberg([0.5, 0.01]).tolist() == pytest.approx([0.5, 0.02])
    # many weakly shifted features: BH (false discovery rate) flags drift where Bonferroni does not
    rng = np.random.default_rng(7)
    cols = [f"f{i}" for i in range(10)]
    ref = pd.DataFrame(rng.normal(size=(2000, 10)), columns=cols)
    batch = pd.DataFrame(rng.normal(size=(150, 10)), columns=cols)
    batch.iloc[:, :6] += 0.2
    verdicts = {}
    for method in ("bonferroni", "bh"):
        detector = DriftDetector(window=150, correction=method)
        detector.fit(ref)
        scores = detector.update(detector.prepare(batch))
        raw = sorted(s.value for s in scores if s.metric == "p_value")
        corrected = {s.labels["feature"]: s.value for s in scores if s.metric == "p_value_corrected"}
        verdicts[method] = (len(overall(scores).details["features"]), raw, corrected)
    assert verdicts["bh"][0] > verdicts["bonferroni"][0]
    assert all(verdicts["bh"][2][f] <= verdicts["bonferroni"][2][f] + 1e-12 for f in cols)
    with pytest.raises(ValueError, match="correction"):
        DriftDetector(correction="holm")


def test_prepare_checks_rows() -> None:
    detector = DriftDetector()
    detector.fit(reference(0))
    with pytest.raises(BadBatch, match="color"):
        detector.prepare(pd.DataFrame({"x1": [1.0], "x2": [2.0]}))
    with pytest.raises(BadBatch, match="x1"):
        detector.prepare(pd.DataFrame({"x1": ["abc"], "x2": [2.0], "color": ["red"]}))
    frame = detector.prepare(pd.DataFrame({"color": ["red"], "x2": ["2.5"], "x1": [1], "extra": [0]}))
    assert list(frame.columns) == ["x1", "x2", "color"] and frame["x2"].iloc[0] == 2.5


# -- outliers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["isolation_forest", "mahalanobis"])
def test_outlier_rates(method: str) -> None:
    detector = OutlierDetector(method=method, window=200)
    ref = reference(0)
    detector.fit(ref)
    normal = detector.update(detector.prepare(reference(1, 200)))
    rate = next(s for s in normal if s.metric == "outlier_rate")
    assert rate.value <= 0.05 and not rate.alert
    instances = [s for s in normal if s.instance]
    assert len(instances) == 200 and all(s.threshold == detector.score_threshold for s in instances)
    # the threshold is the reference's 99th percentile: about 1% of the reference is above it
    x = ref[detector.features].to_numpy()
    assert np.mean(detector.score(x) > detector.score_threshold) == pytest.approx(0.01, abs=0.002)
    far = reference(2, 100)
    far[["x1", "x2"]] += 8
    scores = detector.update(detector.prepare(far))
    assert sum(s.alert for s in scores if s.instance) >= 95
    rate = next(s for s in scores if s.metric == "outlier_rate")
    assert rate.alert
    assert 0.45 <= rate.value <= 0.55  # 100 outliers among the last 200 rows
    assert detector.features == ["x1", "x2"]  # the categorical column is ignored


def test_outlier_explicit_threshold_and_bad_method() -> None:
    detector = OutlierDetector(method="mahalanobis", score_threshold=100.0, min_rows=1)
    detector.fit(reference(0))
    assert not any(s.alert for s in detector.update(detector.prepare(reference(1, 10))))
    with pytest.raises(ValueError, match="mahalanobis"):
        OutlierDetector(method="lof")


# -- bias ------------------------------------------------------------------------------------------
def biased_traffic(seed: int, n: int, rate_a: float, rate_b: float) -> tuple[pd.DataFrame, list[int]]:
    rng = np.random.default_rng(seed)
    group = np.array(["a", "b"] * (n // 2))
    predictions = np.where(group == "a", rng.random(n) < rate_a, rng.random(n) < rate_b).astype(int)
    return pd.DataFrame({"x": rng.normal(size=n), "sex": group}), predictions.tolist()


def test_demographic_parity_difference() -> None:
    ref = pd.DataFrame({"x": np.zeros(10), "sex": ["a", "b"] * 5})
    detector = BiasDetector(protected="sex", min_rows=10)
    detector.fit(ref)
    rows, predictions = biased_traffic(0, 200, 0.5, 0.5)
    fair = detector.update(detector.prepare(rows), predictions, "e1")
    parity = next(s for s in fair if s.metric == "demographic_parity_difference")
    assert parity.value < 0.1 and not parity.alert
    # exact rates: group a all positive, group b half
    detector = BiasDetector(protected="sex", min_rows=2)
    detector.fit(ref)
    rows = pd.DataFrame({"x": [0.0] * 4, "sex": ["a", "a", "b", "b"]})
    scores = detector.update(detector.prepare(rows), [1, 1, 1, 0], "e2")
    rates = {s.labels["group"]: s.value for s in scores if s.metric == "positive_rate"}
    assert rates == {"a": 1.0, "b": 0.5}
    parity = next(s for s in scores if s.metric == "demographic_parity_difference")
    assert parity.value == 0.5 and parity.alert and parity.details["groups"] == {"a": 1.0, "b": 0.5}


def test_equal_opportunity_difference_from_feedback() -> None:
    detector = BiasDetector(protected="sex", min_rows=2, threshold=0.1)
    detector.fit(pd.DataFrame({"x": [0.0, 1.0], "sex": ["a", "b"]}))
    rows = pd.DataFrame({"x": [0.0] * 4, "sex": ["a", "a", "b", "b"]})
    detector.update(detector.prepare(rows), [1, 1, 0, 1], "req-1")  # probabilities/argmax also count
    assert not any(s.metric == "equal_opportunity_difference" for s in detector.metrics())
    scores = detector.feedback("req-1", [1, 1, 1, 1])
    tpr = {s.labels["group"]: s.value for s in scores if s.metric == "true_positive_rate"}
    assert tpr == {"a": 1.0, "b": 0.5}
    eo = next(s for s in scores if s.metric == "equal_opportunity_difference")
    assert eo.value == 0.5 and eo.alert
    with pytest.raises(KeyError):
        detector.feedback("nope", 1)
    with pytest.raises(ValueError, match="4 rows but 2 labels"):
        detector.feedback("req-1", [1, 0])


def test_positive_normalisation() -> None:
    detector = BiasDetector(protected="g")
    assert detector.positive(1) and not detector.positive(0) and detector.positive(0.7) and not detector.positive(0.2)
    assert detector.positive([0.1, 0.9]) and not detector.positive([0.8, 0.2]) and detector.positive([1])
    assert BiasDetector(protected="g", positive_label="yes").positive("yes")
    with pytest.raises(ValueError, match="protected"):
        BiasDetector()
    with pytest.raises(ValueError, match="not a column"):
        BiasDetector(protected="g").fit(pd.DataFrame({"x": [1.0]}))


# -- plug-ins --------------------------------------------------------------------------------------
class MeanDetector(Detector):
    """A custom detector: the mean of feature f0, alert above ``limit``."""

    name = "mean"

    def __init__(self, limit: float = 1.0) -> None:
        super().__init__()
        self.limit = limit

    def update(self, batch, predictions=None, event_id=None):
        mean = float(batch["f0"].mean())
        return self._record([Score("mean", mean, {"feature": "f0"}, alert=mean > self.limit, threshold=self.limit)])


def test_load_by_name_and_module_class() -> None:
    assert isinstance(load_detector("drift", window=10, protected="ignored"), DriftDetector)
    assert load_detector("outlier", threshold=0.2).threshold == 0.2
    custom = load_detector(f"{__name__}:MeanDetector", limit=2.0, window=5)
    assert isinstance(custom, MeanDetector) and custom.limit == 2.0
    custom.fit(np.zeros((5, 2)))
    assert custom.columns == ["f0", "f1"]
    with pytest.raises(ValueError, match="unknown detector"):
        load_detector("nope")
    with pytest.raises(ValueError, match="cannot import"):
        load_detector("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="not a detector"):
        load_detector("json:dumps")


# -- decoding --------------------------------------------------------------------------------------
COLUMNS = ["x1", "x2", "color"]


def test_decode_v1_and_v2_rows() -> None:
    frame = decode_rows({"instances": [[1, 2, "red"], [3, 4, "blue"]]}, COLUMNS)
    assert frame.to_dict("list") == {"x1": [1, 3], "x2": [2, 4], "color": ["red", "blue"]}
    frame = decode_rows({"instances": [{"x1": 1, "x2": 2, "color": "red"}]}, COLUMNS)
    assert list(frame.columns) == COLUMNS
    v2 = {"inputs": [{"name": "x1", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                     {"name": "x2", "shape": [2, 1], "datatype": "FP32", "data": [[3], [4]]},
                     {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["red", "blue"]}]}
    assert decode_rows(v2, COLUMNS).to_dict("list") == {"x1": [1, 2], "x2": [3, 4], "color": ["red", "blue"]}
    tensor = {"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert decode_rows(tensor, ["a", "b"]).to_dict("list") == {"a": [1, 3], "b": [2, 4]}
    with pytest.raises(BadEvent, match="3 features"):
        decode_rows({"instances": [[1, 2]]}, COLUMNS)
    with pytest.raises(BadEvent, match=r"shape \[n, 3\]"):
        decode_rows({"inputs": [{"name": "t", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, COLUMNS)
    with pytest.raises(BadEvent, match="instances"):
        decode_rows({"foo": 1}, COLUMNS)
    assert decode_predictions({"predictions": [1, 0]}) == [1, 0]
    assert decode_predictions({"outputs": [{"name": "p", "shape": [2, 2], "datatype": "FP32",
                                            "data": [0.1, 0.9, 0.8, 0.2]}]}) == [[0.1, 0.9], [0.8, 0.2]]


def test_parse_cloudevent() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": REQUEST_TYPE, "ce-source": "s",
               "content-type": "application/json"}
    attributes, payload = parse_cloudevent(headers, b'{"instances": [[1]]}')
    assert attributes["id"] == "1" and payload == {"instances": [[1]]}
    with pytest.raises(BadEvent, match="ce-source"):
        parse_cloudevent({k: v for k, v in headers.items() if k != "ce-source"}, b"{}")
    with pytest.raises(BadEvent, match="ce-type"):
        parse_cloudevent({**headers, "ce-type": "com.example"}, b"{}")
    with pytest.raises(BadEvent, match="not JSON"):
        parse_cloudevent(headers, b"{nope")
    structured = {"specversion": "1.0", "id": "2", "type": RESPONSE_TYPE, "source": "s", "data": {"predictions": [1]}}
    attributes, payload = parse_cloudevent({"content-type": "application/cloudevents+json"},
                                           json.dumps(structured).encode())
    assert attributes["type"] == RESPONSE_TYPE and payload == {"predictions": [1]}


def test_app_pairs_requests_and_responses_for_bias() -> None:
    detector = BiasDetector(protected="sex", min_rows=1)
    detector.fit(pd.DataFrame({"x": [0.0, 1.0], "sex": ["a", "b"]}))
    app = DetectorApp(detector)

    def event(kind: str, event_id: str, payload: dict) -> Request:
        return Request("POST", "/", {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "t",
                                     "ce-type": f"org.kubeflow.serving.inference.{kind}",
                                     "content-type": "application/json"}, json.dumps(payload).encode())

    async def scenario() -> None:
        # the response first, then the request: paired by ce-id
        answer = await app(event("response", "r1", {"predictions": [1, 0]}))
        assert answer.status == 200 and json.loads(answer.body)["pending"] is True
        answer = await app(event("request", "r1", {"instances": [[0.0, "a"], [1.0, "b"]]}))
        body = json.loads(answer.body)
        assert body["rows"] == 2 and [a["statistic"] for a in body["alerts"]] == ["demographic_parity_difference"]
        answer = await app(Request("POST", "/feedback", {}, json.dumps({"id": "r1", "label": [1, 1]}).encode()))
        assert answer.status == 200, answer.body
        assert (await app(Request("POST", "/feedback", {}, b'{"id": "zz", "label": 1}'))).status == 404
        assert (await app(Request("POST", "/feedback", {}, b'{"label": 1}'))).status == 400
        metrics = (await app(Request("GET", "/metrics"))).body.decode()
        assert 'shipyard_detector_score{detector="bias",feature="sex",statistic="demographic_parity_difference"} 1.0' \
            in metrics
        assert 'statistic="equal_opportunity_difference"' in metrics
        assert 'shipyard_detector_alerts_total{detector="bias",statistic="demographic_parity_difference"} 1.0' \
            in metrics
        assert (await app(Request("GET", "/"))).status == 405

    asyncio.run(scenario())
