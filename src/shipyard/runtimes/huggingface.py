"""Hugging Face runtime: a sentence-transformers model or a transformers pipeline, from a local folder.

A folder with ``modules.json`` (or ``config_sentence_transformers.json``) is a sentence-transformers
model: text in, one embedding per text out. Any other folder with ``config.json`` runs as a
transformers pipeline whose task is the package's ``task`` key, else the model card's
``pipeline_tag``, else what the model's architecture says (``*ForSequenceClassification`` is
text-classification), else feature-extraction. Everything loads from the folder only
(``local_files_only``), on the CPU.

Package config keys: ``task``, ``normalize`` (sentence-transformers), ``threads``, and
``pipeline_kwargs`` (keyword arguments for every pipeline call, e.g. ``max_new_tokens``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import Model, ModelSource, TensorSpec, Tensors
from shipyard.runtimes.signature import package_config, thread_count

TEXT_INPUT = "text"
INSTALL_HINT = "pip install 'shipyard[huggingface]'"
SENTENCE_TRANSFORMERS_MARKERS = ("modules.json", "config_sentence_transformers.json")

#: Text-in pipeline tasks this runtime serves, and how their results become outputs.
LABEL_TASKS = frozenset({"text-classification"})
EMBEDDING_TASKS = frozenset({"feature-extraction"})
JSON_TASKS = frozenset({
    "token-classification", "fill-mask", "text-generation", "text2text-generation", "summarization",
    "translation", "zero-shot-classification",
})
TEXT_TASKS = LABEL_TASKS | EMBEDDING_TASKS | JSON_TASKS
#: Architecture name suffix -> task, tried in order (the first match wins).
ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
)
FALLBACK_TASK = "feature-extraction"


def import_library(name: str) -> Any:
    """Import ``transformers`` or ``sentence_transformers``, or say how to install them."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise RuntimeError(
            f"serving Hugging Face models needs the Python package '{name.replace('_', '-')}', "
            f"which is not installed: {INSTALL_HINT}"
        ) from None


def is_sentence_transformers(folder: Path) -> bool:
    """True when ``folder`` holds a sentence-transformers model rather than a bare transformers one."""
    return any((folder / marker).is_file() for marker in SENTENCE_TRANSFORMERS_MARKERS)


def card_pipeline_tag(folder: Path) -> str | None:
    """The ``pipeline_tag`` in the front matter of the folder's model card (README.md), if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    for line in text.splitlines()[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "pipeline_tag" and value.strip():
            return value.strip().strip("'\"")
    return None


def infer_task(folder: Path, model_config: dict[str, Any], supported: frozenset[str]) -> str:
    """The pipeline task a model folder is for, from its config and model card."""
    for tag in (model_config.get("pipeline_tag"), card_pipeline_tag(folder)):
        if isinstance(tag, str) and tag in supported:
            return tag
    for architecture in model_config.get("architectures") or []:
        for suffix, task in ARCHITECTURE_TASKS:
            if str(architecture).endswith(suffix) and task in supported:
                return task
    return FALLBACK_TASK


def supported_tasks() -> tuple[frozenset[str], dict[str, str]]:
    """The text tasks both this runtime and the installed transformers know, and the task aliases."""
    from transformers.pipelines import SUPPORTED_TASKS, TASK_ALIASES

    return frozenset(TEXT_TASKS & set(SUPPORTED_TASKS)), dict(TASK_ALIASES)


def load_task_model(folder: Path, task: str) -> Any:
    """The model in ``folder`` with the head ``task`` needs, read from local files only."""
    from transformers.pipelines import check_task

    classes = check_task(task)[1]["pt"]
    failures = []
    for model_class in classes:
        try:
            return model_class.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            failures.append(f"{model_class.__name__}: {exc}")
    raise ValueError(f"{folder} does not hold a model for task '{task}' ({'; '.join(failures)})")


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder`` (tokenizer.json, vocab.txt, ...), read from local files only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{folder} has no usable tokenizer ({exc}); save one next to the model with tokenizer.save_pretrained()"
        ) from None


def texts_of(array: np.ndarray) -> list[str]:
    """Decode a BYTES tensor into Python strings, naming the first element that is not text."""
    texts = []
    for index, item in enumerate(array.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{TEXT_INPUT}': element {index} is not valid UTF-8 text") from None
        if not isinstance(item, str):
            kind = type(item).__name__
            raise InvalidInput(f"input '{TEXT_INPUT}': expected text strings, got {kind} at element {index}")
        texts.append(item)
    return texts


def to_json(value: Any) -> bytes:
    """One pipeline result as JSON text (numpy and torch values become plain numbers and lists)."""

    def plain(item: Any) -> Any:
        if hasattr(item, "tolist"):
            return item.tolist()
        raise TypeError(f"cannot encode {type(item).__name__} as JSON")

    return json.dumps(value, default=plain, ensure_ascii=False).encode("utf-8")


def _bool_key(config: dict[str, Any], key: str, name: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"model '{name}': shipyard.yaml key '{key}' must be true or false, got {value!r}")
    return value


class HuggingFaceModel(Model):
    """Text in (``text``, BYTES ``[-1]``); embeddings, labels or JSON results out, depending on the task."""

    format = "huggingface"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.task = ""
        self._encoder: Any = None  # a SentenceTransformer
        self._pipeline: Any = None  # a transformers Pipeline
        self._normalize = False
        self._call_kwargs: dict[str, Any] = {}

    def load(self) -> None:
        folder = self.source.path
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is not a folder; a Hugging Face model is a folder with config.json or modules.json"
            )
        config = package_config(self.source)
        torch = import_library("torch")
        threads = thread_count(self.source)
        if threads:
            torch.set_num_threads(threads)
        self._normalize = _bool_key(config, "normalize", self.name)
        kwargs = config.get("pipeline_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ValueError(
                f"model '{self.name}': shipyard.yaml key 'pipeline_kwargs' must be a mapping, got {kwargs!r}"
            )
        self._call_kwargs = dict(kwargs)
        self.inputs = [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]
        if is_sentence_transformers(folder) and config.get("task") is None:
            self._load_sentence_transformer(folder)
        else:
            self._load_pipeline(folder, config.get("task"))
        self.default_outputs = [spec.name for spec in self.outputs]

    def _load_sentence_transformer(self, folder: Path) -> None:
        import_library("transformers")
        module = import_library("sentence_transformers")
        _quiet_progress_bars()
        self._encoder = module.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        self.task = "sentence-embedding"
        encoder = self._encoder
        measure = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        dimension = measure()  # the older name is deprecated in recent sentence-transformers
        self.outputs = [TensorSpec("embedding", "FP32", (-1, int(dimension) if dimension else -1))]

    def _load_pipeline(self, folder: Path, task: Any) -> None:
        transformers = import_library("transformers")
        _quiet_progress_bars()
        supported, aliases = supported_tasks()
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"{folder} has no config.json; expected a transformers model folder (what save_pretrained writes)"
            )
        model_config = json.loads(config_file.read_text())
        if task is None:
            task = infer_task(folder, model_config, supported)
        task = aliases.get(str(task), str(task))
        if task not in supported:
            raise ValueError(
                f"model '{self.name}': task '{task}' is not supported; Shipyard serves these text tasks "
                f"with the installed transformers: {', '.join(sorted(supported))}"
            )
        self.task = task
        self._pipeline = transformers.pipeline(
            task, model=load_task_model(folder, task), tokenizer=load_tokenizer(folder), device="cpu"
        )
        if task in LABEL_TASKS:
            self.outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]
        elif task in EMBEDDING_TASKS:
            width = self._embed(["shipyard"]).shape[1]
            self.outputs = [TensorSpec("embedding", "FP32", (-1, width))]
        else:
            self.outputs = [TensorSpec("output", "BYTES", (-1,))]

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        texts = texts_of(inputs[TEXT_INPUT])
        import torch

        with torch.inference_mode():
            if self._encoder is not None:
                result = {"embedding": self._encode(texts)}
            else:
                result = self._run_pipeline(texts)
        return {name: result[name] for name in outputs or result}

    def _run_pipeline(self, texts: list[str]) -> Tensors:
        from transformers.pipelines import PipelineException

        try:
            if self.task in LABEL_TASKS:
                return self._classify(texts)
            if self.task in EMBEDDING_TASKS:
                return {"embedding": self._embed(texts)}
            return {"output": self._as_json(texts)}
        except PipelineException as exc:  # the pipeline refused this text (e.g. fill-mask without [MASK])
            raise InvalidInput(f"input '{TEXT_INPUT}': {self.task} cannot use this text: {exc}") from None

    def _encode(self, texts: list[str]) -> np.ndarray:
        width = self.outputs[0].shape[1]
        if not texts:
            return np.zeros((0, max(width, 0)), dtype=np.float32)
        embeddings = self._encoder.encode(
            texts, normalize_embeddings=self._normalize, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(embeddings, dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Mean of each text's token vectors (one text per forward pass, so there is no padding)."""
        if not texts:
            return np.zeros((0, self.outputs[0].shape[1]), dtype=np.float32)
        vectors = self._pipeline(texts, return_tensors=True, **self._call_kwargs)
        return np.stack([v[0].float().mean(dim=0).numpy() for v in vectors]).astype(np.float32)

    def _classify(self, texts: list[str]) -> Tensors:
        results = self._pipeline(texts, **self._call_kwargs) if texts else []
        best = [item[0] if isinstance(item, list) else item for item in results]
        labels = np.empty(len(best), dtype=object)
        labels[:] = [str(item["label"]).encode("utf-8") for item in best]
        return {"label": labels, "score": np.array([item["score"] for item in best], dtype=np.float32)}

    def _as_json(self, texts: list[str]) -> np.ndarray:
        results = self._pipeline(texts, **self._call_kwargs) if texts else []
        encoded = np.empty(len(results), dtype=object)
        encoded[:] = [to_json(item) for item in results]
        return encoded

    def unload(self) -> None:
        self._encoder = None
        self._pipeline = None
        super().unload()


def _quiet_progress_bars() -> None:
    """Loading weights draws progress bars on stderr; a server's log is no place for them."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older or newer transformers
        pass
