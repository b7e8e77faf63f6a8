"""Reading pickle and joblib artifacts, with errors that say what went wrong."""

from __future__ import annotations

import importlib.abc
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")

#: Top-level module of a pickled object -> the extra that installs it.
EXTRAS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


class _NoPandasForSklearnFixes(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` to one importer: ``sklearn.utils.fixes``'s module body.

    scikit-learn (1.9) imports pandas there "if installed" and never uses that reference; pandas
    (and the pyarrow it pulls in) is ~65 MB of a served model's idle memory. scikit-learn looks for
    pandas in ``sys.modules`` or imports it when it meets a DataFrame, so nothing changes for models
    that do use pandas: their pickles import it themselves. Other importers (other threads loading
    other models) are never refused.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas":
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
                frame = frame.f_back
            if frame is not None and frame.f_globals.get("__name__") == "sklearn.utils.fixes":
                raise ModuleNotFoundError("pandas is imported when needed, not by sklearn.utils.fixes", name=name)
        return None


@contextmanager
def _lean_sklearn_import() -> Iterator[None]:
    if "sklearn.utils.fixes" in sys.modules or "pandas" in sys.modules:  # nothing left to save
        yield
        return
    finder = _NoPandasForSklearnFixes()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def read_pickle(path: Path) -> Any:
    """Load a joblib or pickle file; a missing library becomes an install hint."""
    try:
        with _lean_sklearn_import():
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
