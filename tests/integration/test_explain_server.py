"""Explanations over real HTTP from real ``shipyard serve`` processes: V1 ``:explain`` and V2 ``/explain``
for tree models (attributions + base value reproduce the prediction), a linear model with a background
from its package, a model.py's own explain(), the errors (501 without an explainer, 400 naming the
field, 404, 405, 500 naming the model) with the server serving on, health answering during a long
explanation, and the shap format: an explainer process that explains a predictor process over V2, V1
and gRPC."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from conftest import write_custom_model
from serverproc import ServerProcess, running

pytestmark = pytest.mark.integration

pytest.importorskip("shap", reason="built-in explanations need shap: pip install 'shipyard[explain]'")

CUSTOM = {
    "own_explain": '''
        import numpy as np

        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"].sum(axis=1)

            def explain(self, inputs, parameters):
                x = inputs["input-0"]
                return {"attributions": x * float(parameters.get("scale", 1)), "base_value": np.float64(0.5),
                        "rows": np.int64(len(x))}
    ''',
    "async_explain": '''
        import asyncio

        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"]

            async def explain(self, inputs):
                await asyncio.sleep(0)
                return {"rows": len(inputs["input-0"])}
    ''',
    "slow_explain": '''
        import time

        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"]

            def explain(self, inputs, parameters):
                time.sleep(float(parameters.get("seconds", 3)))
                return {"done": True}
    ''',
    "bad_explain": '''
        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"]

            def explain(self, inputs):
                return {"not json": object()}
    ''',
    "raising_explain": '''
        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"]

            def explain(self, inputs):
                raise ValueError("no explanation today")
    ''',
    "no_explain": '''
        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                return inputs["input-0"] * 2
    ''',
}


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_iris, make_regression

    regression = make_regression(200, 5, noise=0.5, random_state=0)
    return regression, load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory, data) -> dict[str, Path]:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (features, target), (iris, labels) = data
    root = tmp_path_factory.mktemp("explain")
    paths = {"gbr": root / "gbr.joblib", "xgbc": root / "xgbc.json", "lgbr": root / "lgbr.txt",
             "pipeline": root / "pipeline.joblib", "iris": root / "iris.joblib"}
    joblib.dump(GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(features, target),
                paths["gbr"])
    xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(iris, labels).save_model(paths["xgbc"])
    lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(features, target),
              10).save_model(paths["lgbr"])
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(iris, labels),
                paths["pipeline"])
    joblib.dump(LogisticRegression(max_iter=1000).fit(iris, labels), paths["iris"])

    linear = paths["linear"] = root / "linear"
    linear.mkdir()
    joblib.dump(LinearRegression().fit(features, target), linear / "model.joblib")
    names = ["age", "income", "height", "weight", "score"]
    header = ",".join(names)
    np.savetxt(linear / "background.csv", features[:150], delimiter=",", header=header, comments="")
    (linear / "shipyard.yaml").write_text(textwrap.dedent("""
        name: linear
        explainer:
          background: background.csv
          max_background_rows: 50
    """))
    for name, source in CUSTOM.items():
        paths[name] = write_custom_model(root / name, textwrap.dedent(source))
    return paths


@pytest.fixture(scope="module")
def server(models):
    served = [models[name] for name in ("gbr", "xgbc", "lgbr", "pipeline", "linear", *CUSTOM)]
    with running(*served) as process:
        yield process


def v2_body(rows: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}], **extra}


def post(url: str, body, timeout: float = 120) -> httpx.Response:
    return httpx.post(url, json=body, timeout=timeout)


def reproduced(answer: dict) -> np.ndarray:
    """What the attributions plus base values add up to, per row (and output)."""
    values, base = np.array(answer["attributions"]), np.array(answer["base_values"])
    return values.sum(axis=1) + (base if values.ndim == 3 else base[0])


def assert_additive(got: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_v2_explain_of_a_tree_regressor_reproduces_its_predictions(server, data):
    (features, _), _ = data
    rows = features[:6]
    answer = post(f"{server.url}/v2/models/gbr/explain", v2_body(rows))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "gbr" and body["explainer"] == "shap" and body["algorithm"] == "tree"
    assert body["output"] == "prediction" and len(body["base_values"]) == 1
    assert body["feature_names"] == [f"x{i}" for i in range(5)]
    assert np.array(body["attributions"]).shape == (6, 5)
    predicted = post(f"{server.url}/v2/models/gbr/infer", v2_body(rows)).json()["outputs"][0]["data"]
    np.testing.assert_allclose(body["predictions"], predicted, rtol=1e-12)
    assert_additive(reproduced(body), np.array(predicted))
    assert "explanations" not in body  # V2 answers only the table

    versioned = post(f"{server.url}/v2/models/gbr/versions/1/explain", v2_body(rows))
    assert versioned.status_code == 200 and versioned.json()["attributions"] == body["attributions"]


def test_v2_explain_of_a_lightgbm_booster_reproduces_its_predictions(server, data):
    (features, _), _ = data
    body = post(f"{server.url}/v2/models/lgbr/explain", v2_body(features[10:15])).json()
    assert body["algorithm"] == "tree" and body["output"] == "prediction"
    assert_additive(reproduced(body), np.array(body["predictions"]))


def test_v1_explain_of_an_xgboost_classifier_reproduces_its_margins(server, models, data):
    import xgboost as xgb

    _, (iris, _) = data
    rows = iris[[0, 60, 120]]
    answer = post(f"{server.url}/v1/models/xgbc:explain", {"instances": rows.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["algorithm"] == "tree" and body["output"] == "margin"
    assert np.array(body["attributions"]).shape == (3, 4, 3) and len(body["base_values"]) == 3
    local = xgb.XGBClassifier()
    local.load_model(models["xgbc"])
    assert_additive(reproduced(body), local.predict(rows, output_margin=True))
    predicted = post(f"{server.url}/v1/models/xgbc:predict", {"instances": rows.tolist()}).json()["predictions"]
    assert body["predictions"] == predicted
    # KServe's V1 shape: one explanation per instance
    assert len(body["explanations"]) == 3
    first = body["explanations"][0]
    assert first["prediction"] == predicted[0] and first["attributions"] == body["attributions"][0]
    assert first["base_values"] == body["base_values"]


def test_linear_model_is_explained_against_its_packaged_background(server, data):
    (features, _), _ = data
    rows = features[:4]
    body = post(f"{server.url}/v1/models/linear:explain", {"instances": rows.tolist()}).json()
    assert body["algorithm"] == "linear" and body["output"] == "prediction"
    assert body["feature_names"] == ["age", "income", "height", "weight", "score"]  # the CSV's header
    assert_additive(reproduced(body), np.array(body["predictions"]))
    # the base value is the model's mean prediction over the background sample it was given
    assert abs(body["base_values"][0]) < 1e3


def test_model_agnostic_explainer_needs_a_background(server, data):
    _, (iris, _) = data
    answer = post(f"{server.url}/v2/models/pipeline/explain", v2_body(iris[:2]))
    assert answer.status_code == 501
    message = answer.json()["error"]
    assert "model 'pipeline'" in message and "background" in message and "explainer.background" in message


def test_custom_explain_sync_and_async(server):
    rows = np.array([[1.0, 2.0], [3.0, 4.0]])
    answer = post(f"{server.url}/v2/models/own_explain/explain", v2_body(rows, parameters={"scale": 2}))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"attributions": (rows * 2).tolist(), "base_value": 0.5, "rows": 2}
    v1 = post(f"{server.url}/v1/models/own_explain:explain", {"instances": rows.tolist()})
    assert v1.json() == {"attributions": rows.tolist(), "base_value": 0.5, "rows": 2}  # its own answer, as is
    assert post(f"{server.url}/v1/models/async_explain:explain", {"instances": [[1], [2], [3]]}).json() == {"rows": 3}


def test_errors_name_what_is_wrong_and_the_server_serves_on(server, data):
    (features, _), _ = data
    url = server.url
    no_explainer = post(f"{url}/v2/models/no_explain/explain", v2_body(np.ones((1, 2))))
    assert no_explainer.status_code == 501
    assert no_explainer.json()["error"] == ("model 'no_explain' has no explainer: add an explain() method to its "
                                            "model.py")

    unknown = post(f"{url}/v2/models/nope/explain", v2_body(np.ones((1, 2))))
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert post(f"{url}/v1/models/nope:explain", {"instances": [[1]]}).status_code == 404
    assert httpx.get(f"{url}/v2/models/gbr/explain").status_code == 405

    missing = post(f"{url}/v1/models/gbr:explain", {"rows": [[1, 2, 3, 4, 5]]})
    assert missing.status_code == 400 and "instances" in missing.json()["error"]
    not_a_list = post(f"{url}/v1/models/gbr:explain", {"instances": 3})
    assert not_a_list.status_code == 400 and "'instances' must be a list" in not_a_list.json()["error"]
    narrow = post(f"{url}/v2/models/gbr/explain", v2_body(features[:2, :3]))
    assert narrow.status_code == 400 and "input-0" in narrow.json()["error"] and "shape" in narrow.json()["error"]
    no_inputs = post(f"{url}/v2/models/gbr/explain", {"parameters": {}})
    assert no_inputs.status_code == 400 and "inputs" in no_inputs.json()["error"]
    malformed = httpx.post(f"{url}/v2/models/gbr/explain", content=b"{not json", timeout=30)
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]

    unserialisable = post(f"{url}/v2/models/bad_explain/explain", v2_body(np.ones((1, 2))))
    assert unserialisable.status_code == 500
    assert "model 'bad_explain'" in unserialisable.json()["error"]
    assert "not JSON-serialisable" in unserialisable.json()["error"]
    raising = post(f"{url}/v2/models/raising_explain/explain", v2_body(np.ones((1, 2))))
    assert raising.status_code == 500
    assert raising.json()["error"] == "model 'raising_explain' raised ValueError: no explanation today"

    # still serving: predictions, explanations and health
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    assert post(f"{url}/v2/models/gbr/infer", v2_body(features[:1])).status_code == 200
    assert post(f"{url}/v2/models/gbr/explain", v2_body(features[:1])).status_code == 200


def test_health_answers_during_a_long_explanation(server):
    finished = threading.Event()
    answers: list[httpx.Response] = []

    def explain() -> None:
        answers.append(post(f"{server.url}/v2/models/slow_explain/explain",
                            v2_body(np.ones((1, 2)), parameters={"seconds": 4})))
        finished.set()

    worker = threading.Thread(target=explain)
    worker.start()
    deadline = time.monotonic() + 30
    while not any(p.endswith("slow_explain") for p in _in_flight(server.url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    live = httpx.get(f"{server.url}/v2/health/live", timeout=10)
    still_explaining = not finished.is_set()
    worker.join(60)
    assert live.status_code == 200 and still_explaining
    assert answers and answers[0].json() == {"done": True}


def _in_flight(url: str) -> list[str]:
    """Models with a request in flight, from the Prometheus gauge."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [line.split('model="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("shipyard_requests_in_flight{") and not line.endswith(" 0.0")]


# -- the shap format: an explainer component in front of a predictor ------------------------------


def _upstream_ready() -> None:
    if not (Path(__file__).parents[2] / "src" / "shipyard" / "server" / "upstream.py").is_file():
        pytest.skip("shipyard serve --predictor-url (server/upstream.py) is not there yet")


@pytest.fixture(scope="module")
def predictor(models):
    _upstream_ready()
    with running(models["iris"], models["gbr"]) as process:
        yield process


def test_shap_format_explains_a_predictor_over_v2(predictor, tmp_path, data):
    _, (iris, _) = data
    folder = tmp_path / "iris-explainer"
    folder.mkdir()
    np.save(folder / "reference.npy", iris[::3])
    (folder / "shipyard.yaml").write_text(textwrap.dedent("""
        name: iris
        explainer:
          background: reference.npy
          max_background_rows: 30
          output: predict_proba
          parameters: {predict_proba: true}
    """))
    with running(folder, "--predictor-url", predictor.url, "--predictor-protocol", "v2") as explainer:
        rows = iris[[5, 55, 105]]
        answer = post(f"{explainer.url}/v1/models/iris:explain", {"instances": rows.tolist()})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["algorithm"] == "kernel" and body["output_name"] == "predict_proba"
        probabilities = post(f"{predictor.url}/v2/models/iris/infer",
                             v2_body(rows, parameters={"predict_proba": True})).json()["outputs"][0]
        expected = np.array(probabilities["data"]).reshape(probabilities["shape"])
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-9)
        assert_additive(reproduced(body), expected)  # kernel SHAP is exact in its sum
        assert len(body["explanations"]) == 3

        # a predict sent to the explainer goes to the predictor
        forwarded = post(f"{explainer.url}/v2/models/iris/infer", v2_body(rows)).json()
        direct = post(f"{predictor.url}/v2/models/iris/infer", v2_body(rows)).json()
        assert forwarded["outputs"] == direct["outputs"]
        wrong = post(f"{explainer.url}/v2/models/iris/explain", v2_body(rows[:, :3]))
        assert wrong.status_code == 400 and "4 features" in wrong.json()["error"]


@pytest.mark.parametrize("protocol", ["v1", "grpc-v2"])
def test_shap_format_explains_a_predictor_over_v1_and_grpc(predictor, tmp_path, data, protocol):
    (features, _), _ = data
    folder = tmp_path / "gbr"  # served under the predictor's model name
    folder.mkdir()
    np.savetxt(folder / "background.csv", features[:40], delimiter=",", header="a,b,c,d,e", comments="")
    extra = ["--predictor-grpc-url", f"grpc://{predictor.grpc_address}"] if protocol == "grpc-v2" else []
    with running(folder, "--predictor-url", predictor.url, "--predictor-protocol", protocol, *extra) as explainer:
        rows = features[100:103]
        body = post(f"{explainer.url}/v2/models/gbr/explain", v2_body(rows)).json()
        assert body["feature_names"] == ["a", "b", "c", "d", "e"], body
        predicted = post(f"{predictor.url}/v2/models/gbr/infer", v2_body(rows)).json()["outputs"][0]["data"]
        np.testing.assert_allclose(body["predictions"], predicted, rtol=1e-9)
        assert_additive(reproduced(body), np.array(predicted))


def test_shap_format_without_a_predictor_says_how_to_run_it(tmp_path, data):
    _upstream_ready()
    (features, _), _ = data
    folder = tmp_path / "alone"
    folder.mkdir()
    np.save(folder / "background.npy", features[:10])
    server = ServerProcess(folder)
    try:
        server.wait_listening()
        deadline = time.monotonic() + 60
        while "--predictor-url" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "the shap format explains a predictor over the network: run it with --predictor-url" in server.output
    finally:
        server.stop()
