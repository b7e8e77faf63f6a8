"""The R runtime against R itself: models fitted by Rscript here, predictions compared with R's own."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.r import RError, RModel, RWorkerFailed
from shipyard.runtimes.r_protocol import ProtocolError, ReplyReader, WorkerGone, enc_int, enc_string, enc_strings

pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="needs Rscript (apt-get install r-base-core)")

# Fits the models, saves them, and writes R's own predictions for the same rows to expected.csv.
TRAIN = r"""
out <- commandArgs(trailingOnly = TRUE)[1]
rows <- iris[seq(1, 150, by = 7), ]
write.csv(rows, file.path(out, "rows.csv"), row.names = FALSE)
lm_model <- lm(Sepal.Length ~ Sepal.Width + Petal.Length + Petal.Width, data = iris)
glm_model <- glm(I(Species == "virginica") ~ Sepal.Length + Petal.Width, data = iris, family = binomial)
named <- iris
levels(named$Species) <- c("s\u00e9tosa", "versicolor", "virginica \u2603")
factor_model <- lm(Sepal.Length ~ Petal.Length + Species, data = named)
fit_guarded <- function() {  # the formula's environment, saved with the model, holds guard()
  guard <- function(x) {
    if (any(x < 0)) quit(save = "no", status = 3L)
    if (any(x > 100)) stop("x is over 100")
    x
  }
  lm(Sepal.Length ~ guard(Petal.Length), data = iris)
}
guarded <- fit_guarded()
saveRDS(lm_model, file.path(out, "lm.rds"))
saveRDS(glm_model, file.path(out, "glm.rds"))
saveRDS(factor_model, file.path(out, "factor_lm.rds"))
saveRDS(guarded, file.path(out, "guarded.rds"))
power <- nls(Sepal.Length ~ a * Petal.Length^b, data = iris, start = list(a = 1, b = 0.5))
saveRDS(power, file.path(out, "nls.rds"))
saveRDS(list(weights = 1:3), file.path(out, "plain_list.rds"))
saveRDS(structure(list(), class = "mystery"), file.path(out, "mystery.rds"))
newrows <- rows
levels(newrows$Species) <- levels(named$Species)
columns <- list(
  lm = predict(lm_model, rows),
  glm_response = predict(glm_model, rows, type = "response"),
  glm_link = predict(glm_model, rows),
  factor_lm = predict(factor_model, newrows),
  nls = predict(power, rows)
)
has_rpart <- requireNamespace("rpart", quietly = TRUE)
if (has_rpart) {
  tree <- rpart::rpart(Species ~ ., data = named)
  saveRDS(tree, file.path(out, "tree.rds"))
}
lines <- do.call(paste, c(lapply(columns, function(x) sprintf("%.17g", x)), sep = ","))
header <- paste(names(columns), collapse = ",")
if (has_rpart) {
  lines <- paste(lines, as.character(predict(tree, rows, type = "class")), sep = ",")
  header <- paste(header, "tree", sep = ",")
}
writeLines(enc2utf8(c(header, lines)), file.path(out, "expected.csv"), useBytes = TRUE)
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("r_models")
    script = folder / "train.R"
    script.write_text(TRAIN, encoding="utf-8")
    subprocess.run(["Rscript", "--vanilla", str(script), str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def rows(fitted: Path) -> list[dict[str, str]]:
    with open(fitted / "rows.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def expected(fitted: Path) -> dict[str, list[str]]:
    with open(fitted / "expected.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    return {key: [row[key] for row in table] for key in table[0]}


def features(rows: list[dict[str, str]], names: list[str]) -> np.ndarray:
    return np.array([[float(row[name]) for name in names] for row in rows])


def numbers(values: list[str]) -> np.ndarray:
    return np.array([float(v) for v in values])


def loaded(path: Path, config: dict | None = None, name: str | None = None) -> RModel:
    options = {"config": config} if config is not None else {}
    model = RModel(ModelSource(name or path.stem, "r", path, options=options))
    model.load()
    return model


@pytest.fixture(scope="module")
def lm_model(fitted: Path):
    model = loaded(fitted / "lm.rds")
    yield model
    model.unload()


def infer(model: RModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return asyncio.run(model.infer(inputs, None, {}))


def test_lm_signature_comes_from_its_terms(lm_model: RModel):
    assert lm_model.columns == ["Sepal.Width", "Petal.Length", "Petal.Width"]
    assert lm_model.model_class == "lm"
    meta = lm_model.metadata()
    assert meta["platform"] == "r"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


def test_lm_predictions_equal_r(lm_model: RModel, rows, expected):
    got = infer(lm_model, {"input-0": features(rows, lm_model.columns)})["predict"]
    np.testing.assert_allclose(got, numbers(expected["lm"]), rtol=1e-13)
    assert got.dtype == np.float64 and got.shape == (len(rows),)


def test_integer_input_and_empty_batch(lm_model: RModel):
    got = infer(lm_model, {"input-0": np.array([[3, 1, 0]], dtype=np.int32)})["predict"]
    assert got.shape == (1,)
    assert infer(lm_model, {"x": np.zeros((0, 3))})["predict"].shape == (0,)


def test_wrong_column_count_is_invalid_input_naming_the_input(lm_model: RModel):
    with pytest.raises(InvalidInput, match=r"input 'input-0': expected shape \[-1, 3\], got \[2, 4\]"):
        infer(lm_model, {"input-0": np.zeros((2, 4))})


def test_glm_type_from_config(fitted: Path, rows, expected):
    response = loaded(fitted / "glm.rds", {"type": "response"})
    link = loaded(fitted / "glm.rds")
    try:
        data = features(rows, ["Sepal.Length", "Petal.Width"])
        np.testing.assert_allclose(infer(response, {"input-0": data})["predict"], numbers(expected["glm_response"]),
                                   rtol=1e-12)
        np.testing.assert_allclose(infer(link, {"input-0": data})["predict"], numbers(expected["glm_link"]), rtol=1e-12)
    finally:
        response.unload()
        link.unload()


def test_factor_column_takes_text_and_unicode_levels(fitted: Path, rows, expected):
    model = loaded(fitted / "factor_lm.rds")
    try:
        assert model.classes == ["numeric", "factor"]
        assert model.metadata()["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1, 2]}]
        names = {"setosa": "s\u00e9tosa", "versicolor": "versicolor", "virginica": "virginica \u2603"}
        table = np.empty((len(rows), 2), dtype=object)
        for i, row in enumerate(rows):  # numbers as text (V2 BYTES) and as numbers (V1 instances) both work
            table[i] = [row["Petal.Length"].encode() if i % 2 else float(row["Petal.Length"]),
                        names[row["Species"]].encode() if i % 2 else names[row["Species"]]]
        got = infer(model, {"input-0": table})["predict"]
        np.testing.assert_allclose(got, numbers(expected["factor_lm"]), rtol=1e-13)

        unknown = np.array([[b"1.4", b"daisy"]], dtype=object)
        with pytest.raises(ModelFailed, match="RError: factor Species has new level daisy"):
            infer(model, {"input-0": unknown})
        with pytest.raises(InvalidInput, match=r"column 'Petal.Length' takes numbers, got 'tall' in row 0"):
            infer(model, {"input-0": np.array([[b"tall", b"versicolor"]], dtype=object)})
    finally:
        model.unload()


def test_rpart_class_predictions_are_text(fitted: Path, rows, expected):
    if not (fitted / "tree.rds").exists():
        pytest.skip("R package rpart is not installed (apt-get install r-cran-rpart)")
    model = loaded(fitted / "tree.rds", {"type": "class"})
    try:
        assert model.metadata()["outputs"] == [{"name": "predict", "datatype": "BYTES", "shape": [-1]}]
        got = infer(model, {"input-0": features(rows, model.columns)})["predict"]
        assert [label.decode("utf-8") for label in got] == expected["tree"]
        empty = infer(model, {"input-0": np.zeros((0, 4))})["predict"]
        assert empty.shape == (0,) and empty.dtype == object
    finally:
        model.unload()
    probabilities = loaded(fitted / "tree.rds")
    try:
        assert probabilities.metadata()["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1, 3]}]
        got = infer(probabilities, {"input-0": features(rows[:3], probabilities.columns)})["predict"]
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got.sum(axis=1), 1.0)
    finally:
        probabilities.unload()


def test_r_error_carries_r_message_and_worker_survives(fitted: Path):
    model = loaded(fitted / "guarded.rds")
    try:
        with pytest.raises(RError, match="x is over 100"):
            model.predict({"input-0": np.array([[500.0]])}, [], {})
        assert model.predict({"input-0": np.array([[1.0]])}, [], {})["predict"].shape == (1,)
        assert model.restarts == 0
    finally:
        model.unload()


def test_worker_dying_mid_request_is_reported_then_replaced(fitted: Path):
    model = loaded(fitted / "guarded.rds")
    try:
        first = model.worker_pid
        with pytest.raises(RWorkerFailed, match=r"failed while predicting .*exit code 3.*the next request starts"):
            model.predict({"input-0": np.array([[-1.0]])}, [], {})
        assert model.predict({"input-0": np.array([[1.0]])}, [], {})["predict"].shape == (1,)
        assert model.restarts == 1 and model.worker_pid != first
    finally:
        model.unload()


def test_killed_worker_is_restarted_by_next_request(fitted: Path, rows, expected, caplog):
    model = loaded(fitted / "lm.rds")
    try:
        first = model.worker_pid
        assert first is not None
        os.kill(first, 9)
        _wait_until_dead(first)
        with caplog.at_level("WARNING", logger="shipyard.runtimes.r"):
            got = model.predict({"input-0": features(rows, model.columns)}, ["predict"], {})["predict"]
        np.testing.assert_allclose(got, numbers(expected["lm"]), rtol=1e-13)
        assert model.restarts == 1 and model.worker_pid != first
        assert f"pid {first}, killed by SIGKILL" in caplog.text
    finally:
        model.unload()


def _wait_until_dead(pid: int) -> None:
    """Until the killed process is a zombie (its parent, this process, has not reaped it yet)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)


def test_unload_stops_the_worker(fitted: Path):
    model = loaded(fitted / "lm.rds")
    process = model._worker.process
    model.unload()
    assert process is not None and process.poll() is not None
    with pytest.raises(RWorkerFailed, match="unloaded"):
        model.predict({"input-0": np.zeros((1, 3))}, [], {})
    model.unload()  # twice is fine


def test_columns_from_config_for_a_model_without_terms(fitted: Path, rows, expected):
    with pytest.raises(ValueError, match=r"input columns of a 'nls' \(it has no terms\); list them under 'columns'"):
        loaded(fitted / "nls.rds")
    model = loaded(fitted / "nls.rds", {"columns": ["Petal.Length"]})
    try:
        assert model.metadata()["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 1]}]
        got = infer(model, {"input-0": features(rows, ["Petal.Length"])})["predict"]
        np.testing.assert_allclose(got, numbers(expected["nls"]), rtol=1e-13)
    finally:
        model.unload()


def test_missing_predict_method_and_missing_package_are_load_errors(fitted: Path):
    with pytest.raises(ValueError, match=r"no predict\(\) method for a 'mystery'.*'packages'"):
        loaded(fitted / "mystery.rds", {"columns": ["a"]})
    with pytest.raises(ValueError, match=r"no predict\(\) method for a 'list'"):
        loaded(fitted / "plain_list.rds")
    with pytest.raises(ValueError, match="there is no package called .?notapackage"):
        loaded(fitted / "lm.rds", {"packages": ["notapackage"]})


def test_file_that_is_not_rds(tmp_path: Path):
    bogus = tmp_path / "bogus.rds"
    bogus.write_text("not R data")
    with pytest.raises(ValueError, match=r"R could not serve .*bogus.rds: unknown input format"):
        loaded(bogus)


def test_config_keys_are_checked(fitted: Path):
    with pytest.raises(ValueError, match="key 'type' must be a non-empty string"):
        loaded(fitted / "lm.rds", {"type": 3})
    with pytest.raises(ValueError, match="key 'columns' must be a list of names"):
        loaded(fitted / "lm.rds", {"columns": "a,b"})


def test_missing_rscript_says_how_to_install(fitted: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"apt-get install r-base-core"):
        loaded(fitted / "lm.rds")


def test_worker_works_in_the_c_locale(fitted: Path, rows, expected, monkeypatch):
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("LANG", "C")
    model = loaded(fitted / "factor_lm.rds")
    try:
        table = np.array([[b"1.4", "s\u00e9tosa".encode()], [b"5.0", "virginica \u2603".encode()]], dtype=object)
        assert infer(model, {"input-0": table})["predict"].shape == (2,)
    finally:
        model.unload()


def test_reply_reader_decodes_and_detects_stray_output():
    reply = b"SYR1" + enc_int(0) + enc_strings(["", "caf\u00e9", "x"]) + enc_string("ok")
    reader = ReplyReader(io.BufferedReader(io.BytesIO(reply)))
    reader.status()
    assert reader.strings() == [b"", "caf\u00e9".encode(), b"x"] and reader.string() == "ok"
    with pytest.raises(RError, match="boom"):
        ReplyReader(io.BufferedReader(io.BytesIO(b"SYR1" + enc_int(1) + enc_string("boom")))).status()
    with pytest.raises(ProtocolError, match="hello from a library"):
        ReplyReader(io.BufferedReader(io.BytesIO(b"[1] hello from a library\n"))).status()
    with pytest.raises(WorkerGone):
        ReplyReader(io.BufferedReader(io.BytesIO(b"SYR1" + enc_int(0)[:2]))).status()
