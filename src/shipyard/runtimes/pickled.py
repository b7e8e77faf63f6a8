"""Reading pickle and joblib artifacts, with errors that say what went wrong."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import pickle
import sys
import types
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


#: numpy submodules that scipy's array-API layer (``clone_module("numpy")``) imports by touching every
#: attribute of numpy, and that a served model does not use: ~8 MB with unittest, argparse and f2py's
#: dependencies. Until something reads one of their attributes they are stand-ins (:class:`_Deferred`).
DEFERRED_NUMPY_MODULES = ("numpy.testing", "numpy.f2py")


class _Deferred(types.ModuleType):
    """A module registered under its name whose body runs on first attribute access: the real
    module is imported then (replacing this one in ``sys.modules``) and its attributes copied here,
    so references taken earlier work too. (importlib's LazyLoader recurses on these packages in 3.11.)"""

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = importlib.import_module(name)
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


def defer_unused_numpy_modules() -> None:
    """Register :data:`DEFERRED_NUMPY_MODULES` that are not imported yet as :class:`_Deferred` modules."""
    for name in DEFERRED_NUMPY_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            parent, _, child = name.rpartition(".")
            sys.modules[name] = deferred = _Deferred(name)
            setattr(sys.modules[parent], child, deferred)  # as the import system does for a submodule


@contextmanager
def _lean_sklearn_import() -> Iterator[None]:
    if "sklearn.utils.fixes" in sys.modules or "pandas" in sys.modules:  # nothing left to save
        yield
        return
    defer_unused_numpy_modules()
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
