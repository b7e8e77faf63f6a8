"""Each runtime answers over real HTTP exactly what its library's own predict gives."""

from __future__ import annotations

import joblib
import httpx
import numpy as np
import pytest

from serverproc import running
from shipyard.client import InferenceClient

BUILT_IN = ["sk_logreg", "sk_pipeline", "sk_linreg", "sk_strings", "xgb_classifier", "xgb_booster",
            "xgb_regressor_pkl", "lgb_booster", "lgb_classifier_pkl"]


@pytest.fixture(scope="module")
def server(artifacts):
    with running(*(artifacts[name] for name in BUILT_IN + ["echo", "asyncecho", "typed"])) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with InferenceClient(server.url) as client:
        yield client


def v2_body(array: np.ndarray, datatype: str = "FP64", **extra) -> dict:
    return {"inputs": [{"name": "input-0", "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}], **extra}


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def test_server_health_and_metadata(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "shipyard" and "version" in meta and isinstance(meta["extensions"], list)
    assert httpx.get(f"{server.url}/").json() == {"status": "alive"}
    listed = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert set(BUILT_IN) <= set(listed)


def test_sklearn_metadata_is_taken_from_the_model(server):
    meta = httpx.get(f"{server.url}/v2/models/sk_logreg").json()
    assert meta["name"] == "sk_logreg" and meta["versions"] == ["1"] and meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    regressor = httpx.get(f"{server.url}/v2/models/sk_linreg").json()
    assert regressor["inputs"][0]["shape"] == [-1, 3]
    assert regressor["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    strings = httpx.get(f"{server.url}/v2/models/sk_strings").json()
    assert strings["outputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize("name", ["sk_logreg", "sk_pipeline", "sk_strings", "xgb_classifier", "lgb_classifier_pkl"])
def test_classifiers_match_library_predict(server, client, artifacts, iris, name):
    features, _ = iris
    rows = features[::7]
    reference = _reference(artifacts, name)
    got = client.infer(name, {"input-0": rows}, outputs=["predict", "predict_proba"])
    expected_labels = reference.predict(rows)
    if expected_labels.dtype.kind in "OU":
        assert [b.decode() for b in got["predict"]] == list(expected_labels)
    else:
        np.testing.assert_array_equal(got["predict"], expected_labels)
    np.testing.assert_allclose(got["predict_proba"], reference.predict_proba(rows), rtol=1e-6)


def _reference(artifacts, name):
    path = artifacts[name]
    if path.suffix == ".json":
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(path)
        return model
    return joblib.load(path)


def test_default_output_is_predict_and_parameter_selects_proba(server, iris):
    rows = iris[0][:2]
    plain = post(server, "/v2/models/sk_logreg/infer", v2_body(rows)).json()
    assert [o["name"] for o in plain["outputs"]] == ["predict"]
    proba = post(server, "/v2/models/sk_logreg/infer", v2_body(rows, parameters={"predict_proba": True})).json()
    assert [o["name"] for o in proba["outputs"]] == ["predict_proba"]
    assert proba["outputs"][0]["shape"] == [2, 3]


def test_regressors_match_library_predict(server, client, artifacts, iris):
    rows = iris[0][::11, :3]
    for name in ["sk_linreg", "xgb_regressor_pkl"]:
        expected = joblib.load(artifacts[name]).predict(rows)
        np.testing.assert_allclose(client.infer(name, {"input-0": rows})["predict"], expected, rtol=1e-5)


def test_boosters_match_library_predict(server, client, artifacts, iris):
    import lightgbm as lgb
    import xgboost as xgb

    rows = iris[0][::9]
    booster = xgb.Booster()
    booster.load_model(artifacts["xgb_booster"])
    got = client.infer("xgb_booster", {"input-0": rows})["predict"]
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(rows)), rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (len(rows), 3)
    lgb_booster = lgb.Booster(model_file=str(artifacts["lgb_booster"]))
    np.testing.assert_allclose(client.infer("lgb_booster", {"input-0": rows})["predict"], lgb_booster.predict(rows))


def test_v1_predict_matches_v2(server, client, iris):
    rows = iris[0][:5]
    response = post(server, "/v1/models/sk_logreg:predict", {"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.json()["predictions"] == client.infer("sk_logreg", {"input-0": rows})["predict"].tolist()
    via_inputs = post(server, "/v1/models/xgb_classifier:predict", {"inputs": rows.tolist()}).json()
    assert len(via_inputs["predictions"]) == 5
    meta = httpx.get(f"{server.url}/v1/models/sk_logreg").json()
    assert meta == {"name": "sk_logreg", "ready": True}


def test_versioned_paths_work(server, iris):
    body = v2_body(iris[0][:1])
    assert post(server, "/v2/models/sk_logreg/versions/1/infer", body).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/sk_logreg/versions/1").json()["name"] == "sk_logreg"
    assert httpx.get(f"{server.url}/v2/models/sk_logreg/versions/1/ready").json() == {"name": "sk_logreg",
                                                                                        "ready": True}
    assert httpx.get(f"{server.url}/v2/models/sk_logreg/ready").status_code == 200


def test_request_id_is_echoed_and_generated(server, iris):
    body = v2_body(iris[0][:1], id="my-request-7")
    assert post(server, "/v2/models/sk_logreg/infer", body).json()["id"] == "my-request-7"
    generated = post(server, "/v2/models/sk_logreg/infer", v2_body(iris[0][:1])).json()["id"]
    assert isinstance(generated, str) and len(generated) >= 16


def test_numeric_datatypes_are_accepted_and_nested_data_works(server, iris):
    rows = iris[0][:3]
    expected = post(server, "/v2/models/sk_logreg/infer", v2_body(rows)).json()["outputs"][0]["data"]
    for datatype in ["FP32", "FP64"]:
        body = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": datatype, "data": rows.tolist()}]}
        assert post(server, "/v2/models/sk_logreg/infer", body).json()["outputs"][0]["data"] == expected
    ints = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32", "data": [5, 3, 1, 0]}]}
    assert post(server, "/v2/models/sk_logreg/infer", ints).status_code == 200


def test_custom_model_pre_predict_post_config_and_data_dir(server):
    body = {"inputs": [{"name": "input-0", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
            "parameters": {"echo_parameters": True, "temperature": 0.5}}
    answer = post(server, "/v2/models/echo/infer", body).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["doubled"]["data"] == [3.0, 6.0]  # x * 2 * scale from data/scale.txt
    assert outputs["name"]["data"] == ["echo"]
    assert "temperature" in outputs["parameters"]["data"][0]
    selected = post(server, "/v2/models/echo/infer", {**body, "outputs": [{"name": "doubled"}]}).json()
    assert [o["name"] for o in selected["outputs"]] == ["doubled"]
    missing = post(server, "/v2/models/echo/infer", {**body, "outputs": [{"name": "nope"}]})
    assert missing.status_code == 400 and "nope" in missing.json()["error"]


def test_async_custom_model_and_v1(server):
    body = {"inputs": [{"name": "input-0", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]}
    answer = post(server, "/v2/models/asyncecho/infer", body).json()
    assert answer["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [3], "data": [2, 3, 4]}]
    assert post(server, "/v1/models/asyncecho:predict", {"instances": [1, 2]}).json() == {"predictions": [2, 3]}


def test_custom_model_with_declared_signature(server, client):
    meta = client.metadata("typed")
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]
    got = client.infer("typed", {"a": np.array([[1, 2], [3, 4]], dtype=np.float32),
                                 "b": np.array(["x", "y"], dtype=object)})
    np.testing.assert_array_equal(got["sum"], [3, 7])
    assert list(got["upper"]) == [b"X", b"Y"]
    response = post(server, "/v2/models/typed/infer",
                    {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
    assert response.status_code == 400 and "missing input 'b'" in response.json()["error"]
