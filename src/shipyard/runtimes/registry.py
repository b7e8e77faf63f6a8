"""Which runtime serves which format, and telling an artifact's format from its name and bytes."""

from __future__ import annotations

from pathlib import Path

from shipyard.runtimes.base import Model, ModelSource
from shipyard.runtimes.custom import ENTRY_FILE, CustomModel
from shipyard.runtimes.lightgbm import LightGBMModel
from shipyard.runtimes.pickled import PICKLE_SUFFIXES
from shipyard.runtimes.sklearn import SKLearnModel
from shipyard.runtimes.xgboost import XGBoostModel

RUNTIMES: dict[str, type[Model]] = {
    "sklearn": SKLearnModel,
    "xgboost": XGBoostModel,
    "lightgbm": LightGBMModel,
    "python": CustomModel,
}
#: Accepted spellings of format names (KServe's and the user's).
ALIASES = {"custom": "python", "scikit-learn": "sklearn", "xgb": "xgboost", "lgb": "lightgbm", "lgbm": "lightgbm"}

XGBOOST_SUFFIXES = (".json", ".ubj", ".bst", ".xgb", ".model")
LIGHTGBM_SUFFIXES = (".txt", ".lgb")
EXPECTED = (
    "a scikit-learn estimator (.joblib, .pkl, .pickle), an XGBoost model (.json, .ubj), "
    "a LightGBM model (.txt), or a directory with model.py or shipyard.yaml"
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
    if head.startswith(b"\x80"):
        return "sklearn"  # a pickle under an unusual name
    if head.startswith(b"tree"):
        return "lightgbm"
    if head.lstrip().startswith(b"{") and b'"learner"' in head:
        return "xgboost"
    raise FormatError(f"cannot tell the model format of {path}; expected {EXPECTED}")


def find_artifact(folder: Path) -> Path | str:
    """Return the single model file in ``folder`` (KServe's layout), or ``python`` for model.py."""
    if (folder / ENTRY_FILE).is_file():
        return "python"
    known = PICKLE_SUFFIXES + XGBOOST_SUFFIXES + LIGHTGBM_SUFFIXES
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in known)
    if len(files) == 1:
        return files[0]
    if not files:
        raise FormatError(f"{folder} holds no model; expected {EXPECTED}")
    names = ", ".join(p.name for p in files)
    raise FormatError(f"{folder} holds several model files ({names}); serve one of them, or add a shipyard.yaml naming the artifact")


def create_model(source: ModelSource) -> Model:
    """Instantiate (not load) the runtime for a resolved source."""
    return RUNTIMES[normalise_format(source.format)](source)
