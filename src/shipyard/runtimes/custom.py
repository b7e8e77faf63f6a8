"""Custom Python models: a directory with ``model.py`` defining a class with ``load()`` and ``predict()``.

The class may also define ``preprocess()`` and ``postprocess()``; any of the three may be sync
or ``async``. Sync methods run in the model's thread pool so the event loop stays free. The
constructor receives ``config`` (the package config dict), ``data_dir`` and ``name`` if its
signature asks for them (or takes ``**kwargs``). ``predict`` receives a dict of input name to
numpy array (and ``parameters`` if it takes a second argument) and returns an array, a dict of
arrays, or anything ``numpy.asarray`` accepts.

A transformer (``shipyard serve --predictor-url``, or ``spec.transformer`` of an InferenceService)
is the same folder with ``preprocess()`` and/or ``postprocess()`` and no ``predict()``: its
preprocessed tensors go to the predictor, whose outputs come back to ``postprocess()``. The
constructor may take ``upstream`` (the predictor's client, ``shipyard.server.upstream.Upstream``)
to call it itself; ``parameters["headers"]`` holds the request's passed headers.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from shipyard.protocol.errors import InferenceError, InvalidInput, ModelFailed
from shipyard.runtimes.base import HEADERS_PARAMETER, Model, ModelSource, NoExplainer, TensorSpec, Tensors
from shipyard.runtimes.signature import declared_specs

if TYPE_CHECKING:
    from shipyard.server.upstream import Upstream

ENTRY_FILE = "model.py"
DEFAULT_OUTPUT = "output-0"
TRANSFORMER_METHODS = ("predict", "preprocess", "postprocess")


def _find_class(module: Any, path: Path, transformer: bool = False) -> type:
    """The model class of ``module``: ``Model``, else its one class with predict() (or, for a transformer,
    with predict(), preprocess() or postprocess())."""
    if isinstance(getattr(module, "Model", None), type):
        return module.Model
    methods = TRANSFORMER_METHODS if transformer else ("predict",)
    candidates = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and value.__module__ == module.__name__
        and any(callable(getattr(value, method, None)) for method in methods)
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        wanted = "a predict(), preprocess() or postprocess() method" if transformer else "a predict() method"
        raise TypeError(f"{path} must define one model class with {wanted} (name it 'Model' to choose); found: {found}")
    return candidates[0]


def _import(path: Path, name: str) -> Any:
    module_name = f"shipyard_user_model_{name.replace('-', '_')}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    sys.path.insert(0, folder)  # let model.py import its sibling modules
    try:
        sys.modules[module_name] = module
        # Compiled from source, not through the bytecode cache: a .pyc is trusted when the source's
        # mtime (in whole seconds) and size match, so an edit within the same second would load
        # stale code on reload.
        exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _constructor_kwargs(cls: type, offered: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {key: value for key, value in offered.items() if key in parameters}


def _takes_parameters(method: Callable[..., Any]) -> bool:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _specs(declared: Any) -> list[TensorSpec]:
    if not declared:
        return []
    return [TensorSpec(item["name"], item["datatype"], tuple(item["shape"])) for item in declared]


def to_tensors(result: Any) -> Tensors:
    """Normalise whatever a custom predict returned into named arrays."""
    if isinstance(result, dict):
        return {str(key): np.asarray(value) for key, value in result.items()}
    return {DEFAULT_OUTPUT: np.asarray(result)}


class CustomModel(Model):
    """Wraps the user's class; its methods decide the behaviour."""

    format = "python"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.instance: Any = None
        self.max_concurrency = int(source.options.get("concurrency", 1))
        #: The predictor this model is a transformer of (``shipyard serve --predictor-url``), if any.
        self.upstream: Upstream | None = source.options.get("upstream")

    def load(self) -> None:
        entry = self.source.path / ENTRY_FILE if self.source.path.is_dir() else self.source.path
        cls = _find_class(_import(entry, self.name), entry, transformer=self.upstream is not None)
        offered = {
            "config": self.source.options.get("config", {}),
            "data_dir": entry.parent / "data",
            "name": self.name,
            "secrets": self.source.options.get("secrets") or {},
            "upstream": self.upstream,
        }
        self.instance = cls(**_constructor_kwargs(cls, offered))
        loader = getattr(self.instance, "load", None)
        if callable(loader):
            result = loader()
            if inspect.isawaitable(result):
                raise TypeError(f"{entry}: load() must be synchronous")
        self.inputs = _specs(getattr(self.instance, "inputs", None))
        self.outputs = _specs(getattr(self.instance, "outputs", None)) or declared_specs(self.source, "outputs") or []
        self.default_outputs = [spec.name for spec in self.outputs]

    async def _call(self, method_name: str, value: Any, parameters: dict[str, Any]) -> Any:
        method = getattr(self.instance, method_name, None)
        if method is None and method_name == "predict" and self.upstream is not None:
            return await self._forward(value, parameters)
        if method is None:
            return value
        args = (value, parameters) if _takes_parameters(method) else (value,)
        if inspect.iscoroutinefunction(method):
            try:
                return await method(*args)
            except InferenceError:
                raise
            except Exception as exc:
                raise ModelFailed.from_exception(self.name, exc) from exc
        return await self.run_sync(method, *args)

    async def _forward(self, value: Any, parameters: dict[str, Any]) -> Tensors:
        """A transformer's predict: the preprocessed tensors go to the predictor, with the request's
        passed headers; its outputs come back for postprocess."""
        assert self.upstream is not None
        try:
            tensors = to_tensors(value)
        except Exception as exc:
            raise ModelFailed(f"model '{self.name}': preprocess() returned a value that is not a tensor: {exc}") from exc
        sent = {key: item for key, item in parameters.items() if key != HEADERS_PARAMETER}
        return await self.upstream.infer(tensors, sent, parameters.get(HEADERS_PARAMETER))

    async def run(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        selected = outputs
        value = await self._call("preprocess", inputs, parameters)
        value = await self._call("predict", value, parameters)
        value = await self._call("postprocess", value, parameters)
        try:
            tensors = to_tensors(value)
        except Exception as exc:
            raise ModelFailed(f"model '{self.name}' returned a value that is not a tensor: {exc}") from exc
        if not selected:
            return tensors
        missing = [name for name in selected if name not in tensors]
        if missing:
            raise InvalidInput(
                f"model '{self.name}' produced no output '{missing[0]}'; it returned: {', '.join(tensors)}"
            )
        return {name: tensors[name] for name in selected}

    async def explain(self, inputs: Tensors, parameters: dict[str, Any]) -> Any:
        """The class's ``explain(inputs[, parameters])``, sync (in the model's thread pool) or async; it returns
        anything JSON-serialisable (numpy arrays and scalars included)."""
        if not callable(getattr(self.instance, "explain", None)):
            if self.upstream is not None:  # a transformer: the predictor explains the preprocessed inputs
                tensors = to_tensors(await self._call("preprocess", inputs, parameters))
                sent = {key: item for key, item in parameters.items() if key != HEADERS_PARAMETER}
                return await self.upstream.explain(tensors, sent, parameters.get(HEADERS_PARAMETER))
            raise NoExplainer(f"model '{self.name}' has no explainer: add an explain() method to its model.py")
        return await self._call("explain", inputs, parameters)
