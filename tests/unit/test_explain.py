"""Built-in explanations in process: the explainer chosen by model (tree, linear, kernel, permutation),
attributions that add up to what they explain, backgrounds from the package (file or examples),
the ``explainer:`` config keys, a model.py's explain(), the shap format over a stand-in predictor,
and serving that never imports shap."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from shipyard.explain.answer import with_v1_explanations
from shipyard.explain.background import BackgroundError, load_background, read_table, sample_rows
from shipyard.explain.builtin import builtin_explainer
from shipyard.package.config import PackageError, parse_config
from shipyard.package.source import model_source
from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes.base import Model, ModelSource, NoExplainer
from shipyard.runtimes.registry import create_model, find_artifact

pytest.importorskip("shap", reason="built-in explanations need shap: pip install 'shipyard[explain]'")


@pytest.fixture(scope="module")
def regression():
    from sklearn.datasets import make_regression

    return make_regression(150, 4, noise=0.1, random_state=1)


@pytest.fixture(scope="module")
def iris_data(iris):
    return iris


def served(path: Path, **options: Any) -> Model:
    source, _ = model_source(path)
    source.options.update(options)
    model = create_model(source)
    model.setup()
    return model


def explain(model: Model, rows: np.ndarray, parameters: dict | None = None) -> dict:
    explainer = builtin_explainer(model)
    assert explainer is not None
    return explainer.explain({model.inputs[0].name: rows}, parameters or {})


def total(answer: dict) -> np.ndarray:
    values, base = np.array(answer["attributions"]), np.array(answer["base_values"])
    return values.sum(axis=1) + (base if values.ndim == 3 else base[0])


def close(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def package(folder: Path, estimator: Any, config: str = "", files: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, folder / "model.joblib")
    (folder / "shipyard.yaml").write_text(textwrap.dedent(config) or "{}\n")
    for name, content in (files or {}).items():
        if isinstance(content, np.ndarray):
            np.save(folder / name, content)
        else:
            (folder / name).write_text(textwrap.dedent(content))
    return folder


# -- tree models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gradient_boosting", "random_forest"])
def test_tree_regressors_are_explained_exactly(tmp_path, regression, kind):
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    features, target = regression
    estimator = (GradientBoostingRegressor(n_estimators=25, random_state=0) if kind == "gradient_boosting"
                 else RandomForestRegressor(n_estimators=10, random_state=0)).fit(features, target)
    joblib.dump(estimator, tmp_path / "model.joblib")
    answer = explain(served(tmp_path / "model.joblib"), features[:7])
    assert answer["algorithm"] == "tree" and answer["output"] == "prediction"
    assert np.array(answer["attributions"]).shape == (7, 4)
    close(np.array(answer["predictions"]), estimator.predict(features[:7]))
    close(total(answer), estimator.predict(features[:7]))


def test_xgboost_classifier_is_explained_in_its_margin(artifacts, iris_data):
    import xgboost as xgb

    features, _ = iris_data
    rows = features[[0, 70, 140]]
    answer = explain(served(artifacts["xgb_classifier"]), rows)
    local = xgb.XGBClassifier()
    local.load_model(artifacts["xgb_classifier"])
    assert answer["output"] == "margin" and answer["output_names"] == ["0", "1", "2"]
    assert np.array(answer["attributions"]).shape == (3, 4, 3)
    close(total(answer), local.predict(rows, output_margin=True))
    assert answer["predictions"] == local.predict(rows).tolist()


def test_raw_boosters_are_explained_through_their_wrappers(artifacts, iris_data, regression, tmp_path):
    import lightgbm as lgb
    import xgboost as xgb

    features, _ = iris_data
    booster = xgb.Booster()
    booster.load_model(artifacts["xgb_booster"])
    answer = explain(served(artifacts["xgb_booster"]), features[:2])
    assert answer["algorithm"] == "tree" and answer["output"] == "margin"
    close(total(answer), booster.predict(xgb.DMatrix(features[:2]), output_margin=True))

    x, y = regression
    lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(x, y), 8).save_model(
        tmp_path / "reg.txt")
    reg = explain(served(tmp_path / "reg.txt"), x[:5])
    assert reg["output"] == "prediction"
    close(total(reg), lgb.Booster(model_file=str(tmp_path / "reg.txt")).predict(x[:5]))


def test_random_forest_classifier_is_explained_in_probabilities(tmp_path, iris_data):
    from sklearn.ensemble import RandomForestClassifier

    features, labels = iris_data
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(features, labels)
    joblib.dump(forest, tmp_path / "forest.joblib")
    answer = explain(served(tmp_path / "forest.joblib"), features[[1, 80]])
    assert answer["output"] == "probability"
    close(total(answer), forest.predict_proba(features[[1, 80]]))


# -- linear and model-agnostic ---------------------------------------------------------------------


def test_linear_models_use_the_packaged_background(tmp_path, iris_data):
    from sklearn.linear_model import LogisticRegression

    features, labels = iris_data
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    folder = package(tmp_path / "logreg", model, """
        inputs:
          - {name: flower, datatype: FP64, shape: [-1, 4], columns: [sl, sw, pl, pw]}
        explainer: {background: data/background.npy, max_background_rows: 40}
    """)
    (folder / "data").mkdir()
    np.save(folder / "data" / "background.npy", features)
    answer = explain(served(folder), features[:3])
    assert answer["algorithm"] == "linear" and answer["output"] == "margin"
    assert answer["feature_names"] == ["sl", "sw", "pl", "pw"]  # declared columns win
    close(total(answer), model.decision_function(features[:3]))
    # the base value is the mean margin over the (sampled) background
    sampled = sample_rows(features, 40)
    close(np.array(answer["base_values"]), model.decision_function(sampled.mean(axis=0, keepdims=True))[0])


@pytest.mark.parametrize("algorithm", ["kernel", "permutation"])
def test_model_agnostic_explainers_over_the_models_predict(tmp_path, iris_data, algorithm):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.neighbors import KNeighborsClassifier

    features, labels = iris_data
    pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=10)).fit(features, labels)
    folder = package(tmp_path / algorithm, pipeline, f"""
        explainer: {{algorithm: {algorithm}, background: bg.csv, max_background_rows: 20, nsamples: 200}}
    """)
    np.savetxt(folder / "bg.csv", features[::5], delimiter=",", header="a,b,c,d", comments="")
    answer = explain(served(folder), features[[3, 90]])
    assert answer["algorithm"] == algorithm and answer["output"] == "probability"
    assert answer["output_name"] == "predict_proba" and answer["feature_names"] == ["a", "b", "c", "d"]
    close(total(answer), pipeline.predict_proba(features[[3, 90]]))


def test_examples_are_the_background_when_no_file_is_given(tmp_path, iris_data):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression

    features, labels = iris_data
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)
    folder = package(tmp_path / "pipe", pipeline, files={"examples.yaml": f"""
        - name: two-rows
          inputs:
            input-0: {features[:2].tolist()}
        - name: full-form
          inputs:
            input-0: {{datatype: FP64, shape: [1, 4], data: {features[100].tolist()}}}
    """})
    answer = explain(served(folder), features[[50]])
    assert answer["algorithm"] == "kernel"
    close(np.array(answer["base_values"]), pipeline.predict_proba(features[[0, 1, 100]]).mean(axis=0))
    close(total(answer), pipeline.predict_proba(features[[50]]))


def test_an_explicit_output_and_labels_that_cannot_be_explained(tmp_path, iris_data):
    from sklearn.neighbors import KNeighborsClassifier

    features, labels = iris_data
    knn = KNeighborsClassifier().fit(features, np.array(["setosa", "versicolor", "virginica"])[labels])
    folder = package(tmp_path / "knn", knn, "explainer: {output: predict, background: bg.npy}\n",
                     {"bg.npy": features[::10]})
    with pytest.raises(NoExplainer, match="output 'predict' holds labels, not numbers; set explainer.output"):
        explain(served(folder), features[:1])
    folder = package(tmp_path / "knn2", knn, "explainer: {output: proba, background: bg.npy}\n",
                     {"bg.npy": features[::10]})
    with pytest.raises(ModelFailed, match="explainer.output = 'proba': the model has no such output; it has: "
                                          "predict, predict_proba"):
        explain(served(folder), features[:1])


def test_what_cannot_be_explained_says_what_to_add(tmp_path, artifacts, iris_data):
    features, _ = iris_data
    with pytest.raises(NoExplainer, match="model 'sk_pipeline': the kernel explainer needs a background sample: "
                                          "set explainer.background in shipyard.yaml"):
        explain(served(artifacts["sk_pipeline"]), features[:1])
    assert builtin_explainer(served(artifacts["echo"])) is None  # model.py: its own explain() or nothing
    echo = served(artifacts["echo"])
    with pytest.raises(NoExplainer) as raised:
        asyncio.run(echo.explain({"input-0": features[:1]}, {}))
    assert raised.value.status == 501
    assert raised.value.message == "model 'echo' has no explainer: add an explain() method to its model.py"
    with pytest.raises(NoExplainer, match=r"^model 'x' has no explainer: add an `explainer:` section to "
                                          r"shipyard.yaml or an explain\(\) method to model.py$"):
        asyncio.run(Model(ModelSource("x", "none", tmp_path)).explain({}, {}))


def test_forced_algorithms_that_do_not_fit_the_model(tmp_path, artifacts, iris_data):
    from sklearn.linear_model import LogisticRegression

    features, labels = iris_data
    folder = package(tmp_path / "tree", LogisticRegression(max_iter=300).fit(features, labels),
                     "explainer: {algorithm: tree}\n")
    with pytest.raises(NoExplainer, match="explainer.algorithm 'tree': shap's tree explainer cannot explain a "
                                          "LogisticRegression"):
        explain(served(folder), features[:1])


def test_background_problems_name_the_key(tmp_path, iris_data):
    from sklearn.linear_model import LinearRegression

    features, _ = iris_data
    estimator = LinearRegression().fit(features[:, :3], features[:, 3])
    missing = package(tmp_path / "missing", estimator, "explainer: {background: nowhere.csv}\n")
    with pytest.raises(ModelFailed, match=r"explainer.background = 'nowhere.csv': .*nowhere.csv does not exist"):
        explain(served(missing), features[:1, :3])
    wide = package(tmp_path / "wide", estimator, "explainer: {background: bg.npy}\n", {"bg.npy": features})
    with pytest.raises(ModelFailed, match=r"the background sample \(bg.npy\) has 4 columns, but input 'input-0' "
                                          "takes 3 features"):
        explain(served(wide), features[:1, :3])
    words = package(tmp_path / "words", estimator, "explainer: {background: bg.csv}\n",
                    {"bg.csv": "a,b,c\n1,2,x\n3,4,y\n"})
    with pytest.raises(ModelFailed, match="column 'c' is not numeric"):
        explain(served(words), features[:1, :3])


def test_rows_must_be_a_numeric_table(artifacts, iris_data):
    model = served(artifacts["xgb_classifier"])
    with pytest.raises(InvalidInput, match=r"input 'input-0': explanations take numeric rows × features"):
        builtin_explainer(model).explain({"input-0": np.array(["a", "b"], dtype=object)}, {})
    with pytest.raises(InvalidInput, match="no rows to explain"):
        builtin_explainer(model).explain({"input-0": np.empty((0, 4))}, {})


# -- backgrounds -----------------------------------------------------------------------------------


def test_background_files(tmp_path):
    (tmp_path / "header.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "plain.csv").write_text("1,2\n3,4\n")
    np.save(tmp_path / "column.npy", np.arange(3.0))
    data, names = read_table(tmp_path / "header.csv", "here")
    assert names == ["a", "b"] and data.tolist() == [[1, 2], [3, 4]]
    data, names = read_table(tmp_path / "plain.csv", "here")
    assert names is None and data.tolist() == [[1, 2], [3, 4]]  # no header: the first row is data
    data, _ = read_table(tmp_path / "column.npy", "here")
    assert data.shape == (3, 1)
    pytest.importorskip("pyarrow")
    import pandas as pd

    pd.DataFrame({"x": [1.0, 2.0], "y": [3, 4]}).to_parquet(tmp_path / "t.parquet")
    data, names = read_table(tmp_path / "t.parquet", "here")
    assert names == ["x", "y"] and data.tolist() == [[1, 3], [2, 4]]
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(BackgroundError, match="here: cube.npy must hold a 2-D numeric array"):
        read_table(tmp_path / "cube.npy", "here")


def test_background_is_sampled_with_a_fixed_seed(tmp_path):
    data = np.arange(1000.0).reshape(500, 2)
    first, second = sample_rows(data, 50), sample_rows(data, 50)
    assert first.shape == (50, 2) and np.array_equal(first, second)
    assert np.all(np.diff(first[:, 0]) > 0)  # in their original order
    assert sample_rows(data[:10], 50).shape == (10, 2)
    np.save(tmp_path / "background.npy", data)
    found = load_background(tmp_path, None, 20, defaults=("background.csv", "background.npy"))
    assert found is not None and found.origin == "background.npy" and found.data.shape == (20, 2)
    assert load_background(tmp_path, None, 20) is None  # no default file asked for, no examples


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"explainer": {"algorithm": "lime"}},
     "shipyard.yaml: explainer.algorithm = 'lime': expected one of auto, tree, linear, kernel, permutation"),
    ({"explainer": {"type": "lime"}}, "shipyard.yaml: explainer.type = 'lime': expected one of shap"),
    ({"explainer": {"background": "bg.txt"}},
     "shipyard.yaml: explainer.background = 'bg.txt': expected a .csv, .parquet, .npy file"),
    ({"explainer": {"background": "../bg.csv"}},
     "shipyard.yaml: explainer.background = '../bg.csv': must be a path inside the package"),
    ({"explainer": {"max_background_rows": 0}},
     "shipyard.yaml: explainer.max_background_rows = 0: expected `int` of at least 1"),
    ({"explainer": {"nsamples": "many"}}, "shipyard.yaml: explainer.nsamples = 'many': expected `int | null`"),
    ({"explainer": {"backgrond": "bg.csv"}}, "shipyard.yaml: explainer: unknown key `backgrond`"),
])
def test_explainer_config_errors_name_the_key(raw, message):
    with pytest.raises(PackageError) as raised:
        parse_config(raw, "shipyard.yaml")
    assert str(raised.value).startswith(message), str(raised.value)


def test_explainer_config_defaults():
    config, warnings = parse_config({"explainer": {"background": "data/bg.parquet"}}, "shipyard.yaml")
    section = config.explainer
    assert warnings == [] and section is not None
    assert (section.type, section.algorithm, section.max_background_rows, section.nsamples) == ("shap", "auto", 100, None)
    assert parse_config({}, "shipyard.yaml")[0].explainer is None


# -- answers ---------------------------------------------------------------------------------------


def test_v1_answers_add_one_explanation_per_instance():
    answer = {"explainer": "shap", "base_values": [0.5], "attributions": [[1, 2], [3, 4]], "predictions": [3.5, 7.5]}
    assert with_v1_explanations(answer)["explanations"] == [
        {"prediction": 3.5, "base_values": [0.5], "attributions": [1, 2]},
        {"prediction": 7.5, "base_values": [0.5], "attributions": [3, 4]},
    ]
    own = {"anything": [1]}
    assert with_v1_explanations(own) == {"anything": [1]}  # a model.py's answer stays its own


# -- model.py explain() ----------------------------------------------------------------------------


def test_custom_explain_sync_async_and_failing(tmp_path):
    from conftest import write_custom_model

    write_custom_model(tmp_path / "sync", '''
        class Model:
            def predict(self, inputs):
                return inputs["input-0"]

            def explain(self, inputs, parameters):
                return {"rows": len(inputs["input-0"]), "k": parameters.get("k")}
    ''')
    write_custom_model(tmp_path / "nosync", '''
        class Model:
            def predict(self, inputs):
                return inputs["input-0"]

            async def explain(self, inputs):
                return {"async": True}

    ''')
    write_custom_model(tmp_path / "broken", '''
        class Model:
            def predict(self, inputs):
                return inputs["input-0"]

            def explain(self, inputs):
                return 1 / 0
    ''')
    rows = {"input-0": np.ones((3, 2))}
    assert asyncio.run(served(tmp_path / "sync").explain(rows, {"k": 7})) == {"rows": 3, "k": 7}
    assert asyncio.run(served(tmp_path / "nosync").explain(rows, {})) == {"async": True}
    with pytest.raises(ModelFailed, match="model 'broken' raised ZeroDivisionError"):
        asyncio.run(served(tmp_path / "broken").explain(rows, {}))


# -- the shap format -------------------------------------------------------------------------------


class StandIn:
    """Implements the Upstream contract over a local estimator; records what it was sent."""

    def __init__(self, estimator: Any, output: str = "output-0", method: str = "predict") -> None:
        self.estimator, self.output, self.method = estimator, output, method
        self.calls: list[tuple[dict, Any, Any]] = []

    def infer_sync(self, inputs, parameters=None, headers=None):
        self.calls.append((dict(inputs), parameters, headers))
        (rows,) = inputs.values()
        return {"other": np.zeros(len(rows)), self.output: getattr(self.estimator, self.method)(rows)}

    async def infer(self, inputs, parameters=None, headers=None):
        return self.infer_sync(inputs, parameters, headers)


def shap_model(folder: Path, upstream: Any, **options: Any) -> Model:
    source, _ = model_source(folder)
    assert source.format == "shap"
    source.options.update({"upstream": upstream, **options})
    model = create_model(source)
    model.setup()
    return model


def test_shap_format_explains_through_the_upstream(tmp_path, regression):
    from sklearn.ensemble import GradientBoostingRegressor

    features, target = regression
    estimator = GradientBoostingRegressor(n_estimators=10, random_state=0).fit(features, target)
    folder = tmp_path / "explainer"
    folder.mkdir()
    np.savetxt(folder / "background.csv", features[:60], delimiter=",", header="p,q,r,s", comments="")
    assert find_artifact(folder) == "shap"
    upstream = StandIn(estimator)
    model = shap_model(folder, upstream, input_name="features")
    assert model.inputs[0].name == "features" and model.inputs[0].shape == (-1, 4)
    headers = {"x-request-id": "abc"}
    answer = asyncio.run(model.explain({"features": features[:3]}, {"headers": headers}))
    assert answer["algorithm"] == "kernel" and answer["feature_names"] == ["p", "q", "r", "s"]
    assert answer["output_name"] == "output-0"
    close(np.array(answer["predictions"]), estimator.predict(features[:3]))
    close(total(answer), estimator.predict(features[:3]))
    assert all(list(sent) == ["features"] and passed == headers for sent, _, passed in upstream.calls)
    with pytest.raises(InvalidInput, match="expected 4 features per row"):
        asyncio.run(model.explain({"features": features[:1, :2]}, {}))
    # a predict through the explainer is the predictor's answer
    forwarded = asyncio.run(model.infer({"x": features[:2]}, None, {}))
    assert set(forwarded) == {"other", "output-0"}
    assert list(upstream.calls[-1][0]) == ["features"]


def test_shap_format_config_output_and_parameters(tmp_path, iris_data):
    from sklearn.linear_model import LogisticRegression

    features, labels = iris_data
    estimator = LogisticRegression(max_iter=500).fit(features, labels)
    folder = tmp_path / "iris"
    folder.mkdir()
    np.save(folder / "ref.npy", features[::4])
    (folder / "shipyard.yaml").write_text(
        "explainer: {background: ref.npy, algorithm: permutation, output: predict_proba,"
        " parameters: {predict_proba: true}}\n")
    upstream = StandIn(estimator, output="predict_proba", method="predict_proba")
    model = shap_model(folder, upstream)
    answer = asyncio.run(model.explain({"input-0": features[[0, 75]]}, {}))
    assert answer["algorithm"] == "permutation" and answer["output_name"] == "predict_proba"
    close(total(answer), estimator.predict_proba(features[[0, 75]]))
    assert upstream.calls[0][1] == {"predict_proba": True}


def test_shap_format_needs_a_predictor_and_a_background(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    np.save(folder / "background.npy", np.zeros((3, 2)))
    source, _ = model_source(folder)
    with pytest.raises(RuntimeError, match="the shap format explains a predictor over the network: run it with "
                                           "--predictor-url"):
        create_model(source).setup()
    (folder / "background.npy").unlink()
    (folder / "shipyard.yaml").write_text("explainer: {algorithm: kernel}\n")
    source, _ = model_source(folder)
    source.options["upstream"] = StandIn(None)
    with pytest.raises(ValueError, match="the shap format needs a background sample: put one of background.csv"):
        create_model(source).setup()
    (folder / "shipyard.yaml").write_text("explainer: {algorithm: tree, background: x.npy}\n")
    source, _ = model_source(folder)
    source.options["upstream"] = StandIn(None)
    with pytest.raises(ValueError, match="explainer.algorithm 'tree' needs the model itself"):
        create_model(source).setup()


# -- serving does not import shap ------------------------------------------------------------------


def test_serving_never_imports_shap(artifacts):
    code = textwrap.dedent(f"""
        import sys, asyncio
        import numpy as np
        import shipyard.server.rest, shipyard.server.dataplane, shipyard.explain.builtin
        import shipyard.runtimes.shap_explainer
        from shipyard.package.source import model_source
        from shipyard.runtimes.registry import create_model
        source, _ = model_source({str(artifacts["sk_logreg"])!r})
        model = create_model(source); model.setup()
        asyncio.run(model.infer({{"input-0": np.ones((1, 4))}}, None, {{}}))
        print("shap" in sys.modules, "numba" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
