"""Reading pickle and joblib artifacts, with errors that say what went wrong."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")

#: Top-level module of a pickled object -> the extra that installs it.
EXTRAS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


def read_pickle(path: Path) -> Any:
    """Load a joblib or pickle file; a missing library becomes an install hint."""
    try:
        try:
            import joblib
        except ImportError:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(module, "all")
        raise RuntimeError(
            f"{path} needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'shipyard[{extra}]'"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable pickle or joblib file ({type(exc).__name__}: {exc})") from None


def module_of(obj: Any) -> str:
    """Top-level package of an object's class (``sklearn``, ``xgboost``, ...)."""
    return type(obj).__module__.split(".")[0]
