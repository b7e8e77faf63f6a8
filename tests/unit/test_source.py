"""Turning a MODEL argument into a source: format inference and shipyard.yaml."""

from __future__ import annotations

import pytest

from shipyard.package.config import PackageError
from shipyard.package.source import model_source
from shipyard.runtimes.registry import FormatError, normalise_format


@pytest.mark.parametrize(
    "name, fmt",
    [("sk_logreg", "sklearn"), ("sk_pipeline", "sklearn"), ("sk_linreg", "sklearn"), ("xgb_classifier", "xgboost"),
     ("xgb_booster", "xgboost"), ("lgb_booster", "lightgbm"), ("echo", "python")],
)
def test_format_is_inferred_from_the_artifact(artifacts, name, fmt):
    source, warnings = model_source(artifacts[name])
    assert source.format == fmt and source.name == name and warnings == []
    assert source.version == "1"


def test_pickle_under_an_unusual_name_is_sniffed(artifacts, tmp_path):
    odd = tmp_path / "estimator.bin"
    odd.write_bytes(artifacts["sk_logreg"].read_bytes())
    source, _ = model_source(odd)
    assert source.format == "sklearn"


def test_kserve_style_directory_with_one_artifact(artifacts, tmp_path):
    folder = tmp_path / "iris"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(artifacts["sk_logreg"].read_bytes())
    source, _ = model_source(folder)
    assert source.name == "iris" and source.path == folder / "model.joblib" and source.format == "sklearn"
    (folder / "other.pkl").write_bytes(b"x")
    with pytest.raises(FormatError, match="several model files"):
        model_source(folder)


def test_empty_directory_says_what_is_expected(tmp_path):
    with pytest.raises(FormatError, match="holds no model.*joblib"):
        model_source(tmp_path)


def test_package_config(artifacts, tmp_path):
    (tmp_path / "model.joblib").write_bytes(artifacts["sk_logreg"].read_bytes())
    (tmp_path / "shipyard.yaml").write_text(
        "name: flowers\nformat: sklearn\nartifact: model.joblib\nversion: 3\npredict_proba: true\nowner: me\n"
    )
    source, warnings = model_source(tmp_path)
    assert (source.name, source.format, source.version) == ("flowers", "sklearn", "3")
    assert source.options["predict_proba"] is True
    assert len(warnings) == 1 and "'owner'" in warnings[0]
    renamed, _ = model_source(tmp_path, name="other")
    assert renamed.name == "other"


def test_package_with_model_py(tmp_path):
    (tmp_path / "model.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    (tmp_path / "shipyard.yaml").write_text("name: mine\n")
    source, _ = model_source(tmp_path)
    assert source.format == "python" and source.path == tmp_path


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("name: [1, 2]\n", ["name = [1, 2]", "expected `str | null`"]),
        ("predict_proba: maybe\n", ["predict_proba", "bool"]),
        ("name: 'has space'\n", ["has space", "not allowed"]),
        ("artifact: missing.joblib\n", ["missing.joblib", "does not exist"]),
        ("format: tensorflow\n", ["unknown model format 'tensorflow'", "sklearn"]),
        ("- a\n- b\n", ["expected a mapping"]),
        ("name: [unclosed\n", ["not valid YAML"]),
        ("concurrency: 0\n", ["concurrency", "at least 1"]),
    ],
)
def test_bad_package_config_names_the_key(artifacts, tmp_path, text, fragments):
    (tmp_path / "model.joblib").write_bytes(artifacts["sk_logreg"].read_bytes())
    (tmp_path / "shipyard.yaml").write_text(text)
    with pytest.raises((PackageError, FormatError)) as error:
        model_source(tmp_path)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_format_aliases():
    assert normalise_format("custom") == "python"
    assert normalise_format("XGB") == "xgboost"
    with pytest.raises(FormatError, match="expected one of"):
        normalise_format("pmml")
