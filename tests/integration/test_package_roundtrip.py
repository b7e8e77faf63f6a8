"""Packages made by ``shipyard.package``, ``shipyard package`` and ``shipyard init``, served by a real
``shipyard serve``: every example in every package's examples.yaml is answered over REST with its
expected outputs, and those are what the trained object itself predicts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

import shipyard.package
from serverproc import running
from shipyard.package.config import read_config
from shipyard.package.skeletons import init

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")]

#: ``shipyard package`` and ``shipyard init`` as a user runs them (main.py registers the same functions).
CLI = textwrap.dedent("""
    import sys
    import typer
    from shipyard.cli import package

    app = typer.Typer()
    app.command("package")(package.package)
    app.command("init")(package.init)
    app(sys.argv[1:])
""")

#: A model whose class is defined in a script's __main__, as in a notebook.
MAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import shipyard.package

    class Shouter:
        def predict(self, texts):
            return np.array([text.upper() + "!" for text in texts], dtype=object)

    shipyard.package(Shouter(), sys.argv[1], ["hello", "caf\\u00e9"])
""")


def flat(data) -> list:
    return np.asarray(data, dtype=object).ravel().tolist()


def ask(url: str, folder: Path, example: dict) -> dict[str, dict]:
    """Send one example as a V2 JSON request; return the response's outputs by name."""
    config, _, _ = read_config(folder)
    datatypes = {spec.name: spec.datatype for spec in config.inputs}
    inputs = [{"name": name, "datatype": datatypes[name], "shape": list(np.shape(np.array(data, dtype=object))),
               "data": flat(data)} for name, data in example["inputs"].items()]
    body = {"inputs": inputs, "outputs": [{"name": name} for name in example["outputs"]]}
    response = httpx.post(f"{url}/v2/models/{config.name}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def assert_answers_examples(url: str, folder: Path) -> list[dict[str, dict]]:
    answers = []
    for example in yaml.safe_load((folder / "examples.yaml").read_text()):
        outputs = ask(url, folder, example)
        for name, expected in example["outputs"].items():
            got, want = outputs[name]["data"], flat(expected)
            assert outputs[name]["shape"] == list(np.shape(np.array(expected, dtype=object))), (folder.name, name)
            if outputs[name]["datatype"] == "BYTES":
                assert got == want, (folder.name, example["name"], name)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{folder.name} {name}")
        answers.append(outputs)
    return answers


@pytest.fixture(scope="module")
def trained(iris):
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = iris
    torch.manual_seed(0)
    return {
        "sklearn": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels),
        "pytorch": torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval(),
    }


@pytest.fixture(scope="module")
def packages(tmp_path_factory, iris, trained, artifacts) -> dict[str, Path]:
    import torch

    root = tmp_path_factory.mktemp("packages")
    features, _ = iris
    rows = features[[0, 50, 100, 149]]
    folders = {
        "iris": shipyard.package(trained["sklearn"], root / "iris", rows),
        "mlp": shipyard.package(trained["pytorch"], root / "mlp", torch.tensor(rows, dtype=torch.float32)),
        "scorer": init(root / "scorer", "custom"),
        "sentiment": init(root / "sentiment", "huggingface"),
        "flowers": init(root / "flowers", "xgboost"),
    }
    subprocess.run([sys.executable, "-c", MAIN_SCRIPT, str(root / "shouter")], check=True, timeout=120)
    folders["shouter"] = root / "shouter"
    (root / "rows.csv").write_text("a,b,c\n5.1,3.5,1.4\n6.7,3.0,5.2\n")
    result = subprocess.run([sys.executable, "-c", CLI, "package", str(artifacts["xgb_regressor_pkl"]),
                             str(root / "petal"), "--sample", str(root / "rows.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    folders["petal"] = root / "petal"
    return folders


@pytest.fixture(scope="module")
def server(packages):
    with running(*packages.values()) as process:
        yield process


def test_packaged_objects_answer_their_examples_with_the_objects_predictions(server, packages, trained, iris):
    import torch

    features, _ = iris
    answers = assert_answers_examples(server.url, packages["iris"])
    assert [answer["predict"]["data"] for answer in answers] == [[label] for label in
                                                                  trained["sklearn"].predict(features[[0, 50, 100]])]
    answers = assert_answers_examples(server.url, packages["mlp"])
    with torch.inference_mode():
        expected = trained["pytorch"](torch.tensor(features[[0, 50, 100]], dtype=torch.float32)).numpy()
    np.testing.assert_allclose([answer["output-0"]["data"] for answer in answers], expected, rtol=1e-5, atol=1e-6)


def test_a_main_module_object_is_served_from_its_pickle(server, packages):
    answers = assert_answers_examples(server.url, packages["shouter"])
    assert [answer["output-0"]["data"] for answer in answers] == [["HELLO!"], ["CAF\u00c9!"]]


def test_cli_package_with_a_csv_sample(server, packages, artifacts):
    import joblib

    config, _, _ = read_config(packages["petal"])
    assert config.inputs[0].columns == ["a", "b", "c"]
    answers = assert_answers_examples(server.url, packages["petal"])
    regressor = joblib.load(artifacts["xgb_regressor_pkl"])
    expected = regressor.predict(np.array([[5.1, 3.5, 1.4], [6.7, 3.0, 5.2]]))
    np.testing.assert_allclose([answer["predict"]["data"][0] for answer in answers], expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["scorer", "sentiment", "flowers"])
def test_init_skeletons_answer_their_examples(server, packages, name):
    assert_answers_examples(server.url, packages[name])


def test_metadata_matches_the_written_signature(server, packages):
    for name, folder in packages.items():
        config, _, _ = read_config(folder)
        metadata = httpx.get(f"{server.url}/v2/models/{config.name}", timeout=10).json()
        assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [
            (t.name, t.datatype) for t in config.inputs], name
        assert json.dumps(sorted(t["name"] for t in metadata["outputs"])) == json.dumps(
            sorted(t.name for t in config.outputs)), name
