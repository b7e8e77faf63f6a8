"""Which runtime serves which format, and telling an artifact's format from its name and bytes.

Runtime classes are imported only when a model of that format is created, so serving a
scikit-learn model never imports torch or onnxruntime.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from shipyard.runtimes.base import Model, ModelSource
from shipyard.runtimes.pickled import PICKLE_SUFFIXES

ENTRY_FILE = "model.py"

#: format name -> "module:Class" of its runtime
RUNTIMES: dict[str, str] = {
    "sklearn": "shipyard.runtimes.sklearn:SKLearnModel",
    "xgboost": "shipyard.runtimes.xgboost:XGBoostModel",
    "lightgbm": "shipyard.runtimes.lightgbm:LightGBMModel",
    "onnx": "shipyard.runtimes.onnx:ONNXModel",
    "pytorch": "shipyard.runtimes.pytorch:PyTorchModel",
    "huggingface": "shipyard.runtimes.huggingface:HuggingFaceModel",
    "r": "shipyard.runtimes.r:RModel",
    "python": "shipyard.runtimes.custom:CustomModel",
    "shap": "shipyard.runtimes.shap_explainer:ShapExplainerModel",
}
#: Accepted spellings of format names (KServe's modelFormat names and common ones).
ALIASES = {
    "custom": "python", "scikit-learn": "sklearn", "xgb": "xgboost", "lgb": "lightgbm", "lgbm": "lightgbm",
    "torch": "pytorch", "torchscript": "pytorch", "hf": "huggingface", "transformers": "huggingface",
    "sentence-transformers": "huggingface", "onnxruntime": "onnx",
}

XGBOOST_SUFFIXES = (".json", ".ubj", ".bst", ".xgb", ".model")
LIGHTGBM_SUFFIXES = (".txt", ".lgb")
ONNX_SUFFIXES = (".onnx",)
PYTORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".pt2")
R_SUFFIXES = (".rds",)
ARTIFACT_SUFFIXES = PICKLE_SUFFIXES + XGBOOST_SUFFIXES + LIGHTGBM_SUFFIXES + ONNX_SUFFIXES + PYTORCH_SUFFIXES + R_SUFFIXES
#: Files that mark a directory holding no model as a shap explainer (the background sample).
SHAP_MARKERS = ("background.csv", "background.parquet", "background.npy")
#: Files that mark a directory as a Hugging Face model (transformers or sentence-transformers).
HUGGINGFACE_MARKERS = ("config.json", "modules.json", "config_sentence_transformers.json")
EXPECTED = (
    "a scikit-learn estimator (.joblib, .pkl, .pickle), an XGBoost model (.json, .ubj), a LightGBM model (.txt), "
    "an ONNX model (.onnx), a PyTorch TorchScript or torch.export file (.pt, .pt2), an R model (.rds), "
    "a Hugging Face model directory, a directory with model.py or shipyard.yaml, or a shap explainer's "
    "directory (background.csv, .parquet or .npy)"
)


class FormatError(ValueError):
    """The artifact's format cannot be told, or it is not what its name says."""


def normalise_format(name: str) -> str:
    """Canonical format name, or FormatError listing the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in RUNTIMES:
        raise FormatError(f"unknown model format '{name}'; expected one of: {', '.join(RUNTIMES)} (or 'custom')")
    return key


def _head(path: Path, size: int = 4096) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def sniff_format(path: Path) -> str:
    """Tell a model file's format from its suffix, then check its first bytes agree."""
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix in PICKLE_SUFFIXES:
        return "sklearn"
    if suffix in XGBOOST_SUFFIXES:
        if suffix == ".json" and b'"learner"' not in head:
            raise FormatError(f"{path} is JSON but not an XGBoost model (no \"learner\" key); expected {EXPECTED}")
        return "xgboost"
    if suffix in LIGHTGBM_SUFFIXES:
        if not head.startswith(b"tree"):
            raise FormatError(
                f"{path} is not a LightGBM text model (it should start with 'tree'); expected {EXPECTED}"
            )
        return "lightgbm"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in PYTORCH_SUFFIXES:
        if not head.startswith(b"PK"):
            raise FormatError(f"{path} is not a TorchScript or torch.export archive (not a zip file); expected {EXPECTED}")
        return "pytorch"
    if suffix in R_SUFFIXES:
        return "r"
    if head.startswith(b"\x80"):
        return "sklearn"  # a pickle under an unusual name
    if head.startswith(b"tree"):
        return "lightgbm"
    if head.lstrip().startswith(b"{") and b'"learner"' in head:
        return "xgboost"
    raise FormatError(f"cannot tell the model format of {path}; expected {EXPECTED}")


def find_artifact(folder: Path) -> Path | str:
    """The model in ``folder``: ``python`` for model.py, ``huggingface`` for a HF directory, else its one file."""
    if (folder / ENTRY_FILE).is_file():
        return "python"
    if any((folder / marker).is_file() for marker in HUGGINGFACE_MARKERS):
        return "huggingface"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ARTIFACT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files and _is_explainer(folder):
        return "shap"
    if not files:
        raise FormatError(f"{folder} holds no model; expected {EXPECTED}")
    names = ", ".join(p.name for p in files)
    raise FormatError(f"{folder} holds several model files ({names}); serve one of them, or add a shipyard.yaml naming the artifact")


def _is_explainer(folder: Path) -> bool:
    """A folder without a model that holds a background sample, or a shipyard.yaml with an explainer."""
    if any((folder / marker).is_file() for marker in SHAP_MARKERS):
        return True
    config = folder / "shipyard.yaml"
    return config.is_file() and re.search(r"^explainer\s*:", config.read_text(errors="replace"), re.MULTILINE) is not None


def runtime_class(fmt: str) -> type[Model]:
    """Import and return the runtime class for a format."""
    module_name, class_name = RUNTIMES[normalise_format(fmt)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_model(source: ModelSource) -> Model:
    """Instantiate (not load) the runtime for a resolved source. A package that needs its own
    environment (``source.options["isolation"]``, set by ``shipyard.package.environment``) gets a
    worker process in it."""
    if source.options.get("isolation") is not None:
        from shipyard.runtimes.isolated import IsolatedModel  # imports this module

        return IsolatedModel(source)
    return runtime_class(source.format)(source)
