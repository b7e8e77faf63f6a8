"""``shipyard init DIR --format F``: every skeleton trains, writes a valid package and predicts its examples.

Each package is loaded by its runtime the way the server loads it and run on the inputs read back
from examples.yaml; the answers must equal the expected outputs written there, and what the
format's own library computes from the artifact (independently of Shipyard's runtime).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shipyard.package.config import PackageError, read_config, requirements_of
from shipyard.package.skeletons import FORMATS, init, skeleton_for
from shipyard.package.source import model_source
from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE
from shipyard.runtimes.registry import create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

NEEDS = {"sklearn": ["sklearn"], "xgboost": ["xgboost", "sklearn"], "lightgbm": ["lightgbm"],
         "onnx": ["onnx", "onnxruntime"], "pytorch": ["torch"], "huggingface": ["torch", "transformers"],
         "custom": []}


def request_tensors(config, example: dict) -> dict[str, np.ndarray]:
    """An example's inputs as the tensors a request carries (datatype from the package signature)."""
    datatypes = {spec.name: spec.datatype for spec in config.inputs}
    tensors = {}
    for name, data in example["inputs"].items():
        if datatypes[name] == "BYTES":
            array = np.empty(len(data), dtype=object)
            array[:] = [text.encode() for text in data]
        else:
            array = np.array(data, dtype=DATATYPE_TO_DTYPE[datatypes[name]])
        tensors[name] = array
    return tensors


def library_answer(fmt: str, folder: Path, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the format's own library says the artifact predicts (no Shipyard runtime involved)."""
    if fmt == "sklearn":
        import joblib

        model = joblib.load(folder / "model.joblib")
        return {"predict": model.predict(tensors["input-0"]), "predict_proba": model.predict_proba(tensors["input-0"])}
    if fmt == "xgboost":
        import xgboost

        classifier = xgboost.XGBClassifier()
        classifier.load_model(folder / "model.ubj")
        return {"predict": classifier.predict(tensors["input-0"]),
                "predict_proba": classifier.predict_proba(tensors["input-0"])}
    if fmt == "lightgbm":
        import lightgbm

        return {"predict": lightgbm.Booster(model_file=str(folder / "model.txt")).predict(tensors["input-0"])}
    if fmt == "onnx":
        import onnx
        from onnx.reference import ReferenceEvaluator

        return {"y": ReferenceEvaluator(onnx.load_model(str(folder / "model.onnx"))).run(None, tensors)[0]}
    if fmt == "pytorch":
        import torch

        module = torch.export.load(str(folder / "model.pt2")).module()
        with torch.inference_mode():
            return {"output-0": module(torch.from_numpy(tensors["points"])).numpy()}
    if fmt == "huggingface":
        import transformers

        classify = transformers.pipeline("text-classification", model=str(folder / "model"), device="cpu")
        best = classify([text.decode() for text in tensors["text"]])
        return {"label": np.array([item["label"] for item in best], dtype=object),
                "score": np.array([item["score"] for item in best])}
    settings = json.loads((folder / "data" / "weights.json").read_text())
    score = tensors["features"] @ np.array(settings["weights"]) + settings["bias"]
    return {"score": score, "positive": (score > 0).astype(np.int64)}


def assert_same(got: np.ndarray, want, name: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype == object or want.dtype == object:
        as_text = [item.decode() if isinstance(item, bytes) else str(item) for item in got.ravel()]
        assert as_text == [str(item) for item in want.ravel()], name
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_skeleton_serves_its_examples(tmp_path, fmt):
    for module in NEEDS[fmt]:
        pytest.importorskip(module)
    folder = init(tmp_path / f"my-{fmt}", fmt)

    config, raw, warnings = read_config(folder)
    assert warnings == []
    assert config.name == f"my-{fmt}"
    assert config.format == ("python" if fmt == "custom" else fmt)
    assert config.inputs and config.outputs
    text = (folder / "shipyard.yaml").read_text()
    assert text.count("\n# ") >= 5  # each key is explained
    assert (folder / ("model.py" if fmt == "custom" else "train.py")).is_file()
    pins = requirements_of(config, folder)
    assert pins and all("==" in line for line in pins) and not any(line.startswith("shipyard") for line in pins)
    readme = (folder / "README.md").read_text()
    assert f"shipyard test {tmp_path / f'my-{fmt}'}" in readme and f"shipyard serve {tmp_path / f'my-{fmt}'}" in readme

    examples = yaml.safe_load((folder / "examples.yaml").read_text())
    assert len(examples) == 3
    source, _ = model_source(folder)
    model = create_model(source)
    model.load()
    try:
        for example in examples:
            tensors = request_tensors(config, example)
            answer = asyncio.run(model.infer(tensors, list(example["outputs"]), {}))
            reference = library_answer(fmt, folder, tensors)
            for name, expected in example["outputs"].items():
                assert_same(answer[name], expected, f"{example['name']} {name} (runtime vs examples.yaml)")
                assert_same(reference[name], expected, f"{example['name']} {name} (library vs examples.yaml)")
    finally:
        model.unload()


def test_train_py_reproduces_the_packaged_model(tmp_path):
    pytest.importorskip("sklearn")
    folder = init(tmp_path / "iris", "sklearn")
    packaged = (folder / "model.joblib").read_bytes()
    (folder / "model.joblib").unlink()
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, capture_output=True, timeout=120)
    check = textwrap.dedent("""
        import joblib, sys
        import numpy as np
        rows = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]])
        print(joblib.load(sys.argv[1]).predict_proba(rows).tolist())
    """)
    answers = []
    for data in (packaged, (folder / "model.joblib").read_bytes()):
        (tmp_path / "model.joblib").write_bytes(data)
        result = subprocess.run([sys.executable, "-c", check, str(tmp_path / "model.joblib")], capture_output=True,
                                text=True, check=True, timeout=60)
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1]


def test_unknown_format():
    with pytest.raises(PackageError, match="unknown format 'tensorflow'; expected one of: sklearn, xgboost, "
                                           "lightgbm, onnx, pytorch, huggingface, custom"):
        skeleton_for("tensorflow")


def test_missing_library_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an absent package looks like to importlib
    with pytest.raises(PackageError, match=r"needs the Python package\(s\) xgboost.*pip install 'shipyard\[xgboost\]'"):
        init(tmp_path / "boost", "xgboost")
    assert not (tmp_path / "boost").exists()


def test_non_empty_directory_needs_force(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(PackageError, match="already exists and is not empty.*--force"):
        init(target, "custom")
    assert (target / "keep.txt").read_text() == "mine"
    init(target, "custom", force=True, name="scorer")
    assert not (target / "keep.txt").exists()
    assert read_config(target)[0].name == "scorer"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folders left


def test_cli_init_and_package(tmp_path, artifacts):
    """The commands as typer runs them (the same functions ``shipyard init`` / ``shipyard package`` register)."""
    import typer

    from shipyard.cli import package as commands

    app = typer.Typer()
    app.command("package")(commands.package)
    app.command("init")(commands.init)
    runner = CliRunner()

    result = runner.invoke(app, ["init", str(tmp_path / "scorer"), "--format", "custom"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and f"shipyard serve {tmp_path / 'scorer'}" in result.stdout
    result = runner.invoke(app, ["init", str(tmp_path / "scorer"), "--format", "custom"])
    assert result.exit_code == 1 and "--force" in result.stderr
    result = runner.invoke(app, ["init", str(tmp_path / "other"), "--format", "keras"])
    assert result.exit_code == 1 and "unknown format 'keras'" in result.stderr

    (tmp_path / "rows.json").write_text(json.dumps([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    result = runner.invoke(app, ["package", str(artifacts["sk_logreg"]), str(tmp_path / "iris"),
                                 "--sample", str(tmp_path / "rows.json"), "--examples", "1"])
    assert result.exit_code == 0, result.output
    examples = yaml.safe_load((tmp_path / "iris" / "examples.yaml").read_text())
    assert len(examples) == 1 and examples[0]["inputs"] == {"input-0": [[5.1, 3.5, 1.4, 0.2]]}
    assert examples[0]["outputs"]["predict"] == [0] and len(examples[0]["outputs"]["predict_proba"][0]) == 3
    result = runner.invoke(app, ["package", str(artifacts["sk_logreg"]), str(tmp_path / "iris")])
    assert result.exit_code == 1 and "--force" in result.stderr
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["package", str(artifacts["sk_logreg"]), str(tmp_path / "narrow"),
                                 "--sample", str(tmp_path / "rows.csv")])
    assert result.exit_code == 1 and "sample_input does not fit the model" in result.stderr
    assert "expected shape [-1, 4], got [1, 2]" in result.stderr
    assert not (tmp_path / "narrow").exists()
