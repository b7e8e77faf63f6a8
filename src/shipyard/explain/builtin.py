"""The built-in explainer of a served model that has no explain() of its own.

Chosen by model: a tree ensemble (scikit-learn trees and forests, gradient boosting, XGBoost,
LightGBM) gets shap's exact TreeExplainer, a linear scikit-learn model the LinearExplainer over
the background, anything else with a synchronous predict a model-agnostic explainer (kernel, or
permutation) over that predict and the background. ``explainer.algorithm`` forces one.

:meth:`BuiltinExplainer.explain` is synchronous: the server runs it in the model's thread pool.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from shipyard.explain import algorithms
from shipyard.explain.answer import explanation
from shipyard.explain.background import Background, BackgroundError, EXAMPLES_FILE, load_background
from shipyard.explain.settings import Settings, declared_columns, package_folder, settings_of
from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, NUMERIC_DATATYPES
from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes.base import Model, NoExplainer, TensorSpec, Tensors

PROBA = "predict_proba"


@dataclass
class _Built:
    explainer: algorithms.Explainer
    feature_names: list[str]
    #: What the attributions add up to, when known up front (model-agnostic explainers).
    output: str | None = None
    output_name: str | None = None


def underlying(estimator: Any) -> Any:
    """The library object shap reads: a raw Booster behind Shipyard's estimator wrappers."""
    if type(estimator).__module__.startswith("shipyard.runtimes"):  # BoosterEstimator and friends
        return getattr(estimator, "booster", estimator)
    return estimator


class BuiltinExplainer:
    """SHAP for one loaded model; the shap explainer is made on the first explanation and kept."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self._lock = threading.Lock()
        self._built: _Built | None = None

    @property
    def estimator(self) -> Any:
        return getattr(self.model, "estimator", None)

    # -- the answer -------------------------------------------------------------------------
    def explain(self, inputs: Tensors, parameters: dict[str, Any]) -> dict[str, Any]:
        spec = self._input_spec()
        rows = _rows(inputs, spec)
        with self._lock:  # a shap explainer keeps per-call state
            if self._built is None:
                self._built = self._build(spec, rows.shape[1])
            built = self._built
            attributions = built.explainer.attribute(rows)
        selected = self.model.select_outputs(None, parameters) or [o.name for o in self.model.outputs[:1]]
        outputs = self.model.predict({spec.name: _as_input(rows, spec)}, selected[:1], parameters)
        predictions = next(iter(outputs.values())) if outputs else np.empty(0)
        output = built.output or self._output_space(attributions, rows, spec)
        return explanation(self.model.name, built.explainer.algorithm, output, built.feature_names, attributions,
                           predictions, built.output_name, self._output_names(attributions, built.output_name))

    def _output_space(self, attributions: algorithms.Attributions, rows: np.ndarray, spec: TensorSpec) -> str:
        """What tree or linear attributions add up to: the prediction, a probability, or the margin."""
        explained = attributions.explained
        for name, label in (("predict", "prediction"), (PROBA, "probability")):
            if not any(o.name == name for o in self.model.outputs):
                continue
            value = np.asarray(self.model.predict({spec.name: _as_input(rows, spec)}, [name], {})[name])
            if value.dtype.kind in "biuf" and value.shape == explained.shape and np.allclose(
                    value, explained, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(value).max(initial=0)))):
                return label
        return "margin"

    def _output_names(self, attributions: algorithms.Attributions, output_name: str | None) -> list[str] | None:
        classes = getattr(self.estimator, "classes_", None)
        if attributions.values.ndim == 3 and classes is not None and len(classes) == attributions.values.shape[2]:
            if output_name in (None, PROBA):
                return [str(c) for c in np.asarray(classes).tolist()]
        return None

    # -- choosing and making the shap explainer -----------------------------------------------
    def _build(self, spec: TensorSpec, width: int) -> _Built:
        model, settings, estimator = self.model, self.settings, self.estimator
        algorithm = settings.algorithm
        target = underlying(estimator) if estimator is not None else None
        if algorithm in ("tree", "linear") and target is None:
            raise NoExplainer(f"model '{model.name}': explainer.algorithm '{algorithm}' needs a scikit-learn, "
                              f"XGBoost or LightGBM model; a {model.format} model takes kernel or permutation")
        background: Background | None = None
        if algorithm == "tree" or (algorithm == "auto" and algorithms.is_tree(target)):
            try:
                explainer = algorithms.tree(target)
            except NoExplainer:
                raise
            except Exception as exc:  # shap's InvalidModelError and friends
                if algorithm == "tree":
                    raise NoExplainer(f"model '{model.name}': explainer.algorithm 'tree': shap's tree explainer "
                                      f"cannot explain a {type(target).__name__}: {exc}") from None
            else:
                if settings.background is not None:  # only for its feature names
                    background = self._background(spec, width, "tree")
                return _Built(explainer, self._feature_names(width, background))
        if algorithm == "linear" or (algorithm == "auto" and algorithms.is_linear(target)):
            background = self._background(spec, width, "linear")
            try:
                explainer = algorithms.linear(target, background.data)
            except NoExplainer:
                raise
            except Exception as exc:
                if algorithm == "linear":
                    raise NoExplainer(f"model '{model.name}': explainer.algorithm 'linear': shap's linear explainer "
                                      f"cannot explain a {type(target).__name__}: {exc}") from None
            else:
                return _Built(explainer, self._feature_names(width, background))
        kind = "kernel" if algorithm in ("auto", "tree", "linear") else algorithm
        background = background or self._background(spec, width, kind)
        output_name = self._agnostic_output()
        predict = partial(self._predict_output, spec, output_name)
        explainer = algorithms.model_agnostic(kind, predict, background.data, settings.nsamples)
        output = "probability" if output_name == PROBA else "prediction"
        return _Built(explainer, self._feature_names(width, background), output, output_name)

    def _background(self, spec: TensorSpec, width: int, kind: str) -> Background:
        model, settings = self.model, self.settings
        try:
            background = load_background(package_folder(model.source), settings.background,
                                         settings.max_background_rows, spec.name)
        except BackgroundError as exc:
            raise ModelFailed(f"model '{model.name}': {exc}") from None
        if background is None:
            raise NoExplainer(f"model '{model.name}': the {kind} explainer needs a background sample: set "
                              "explainer.background in shipyard.yaml (a .csv, .parquet or .npy file in the package) "
                              f"or add {EXAMPLES_FILE}")
        if background.width != width:
            raise ModelFailed(f"model '{model.name}': the background sample ({background.origin}) has "
                              f"{background.width} columns, but input '{spec.name}' takes {width} features")
        return background

    def _feature_names(self, width: int, background: Background | None) -> list[str]:
        candidates = [declared_columns(self.model.source),
                      _names(getattr(self.estimator, "feature_names_in_", None)),
                      background.feature_names if background else None]
        for names in candidates:
            if names and len(names) == width:
                return names
        return [f"x{index}" for index in range(width)]

    def _agnostic_output(self) -> str | None:
        """The output a model-agnostic explainer explains: ``explainer.output``, a classifier's
        probabilities, else the model's first default output."""
        known = [o.name for o in self.model.outputs]
        wanted = self.settings.output
        if wanted is not None:
            if known and wanted not in known:
                raise ModelFailed(f"model '{self.model.name}': explainer.output = '{wanted}': the model has no such "
                                  f"output; it has: {', '.join(known)}")
            return wanted
        if PROBA in known:
            return PROBA
        return (self.model.default_outputs or known or [None])[0]

    def _predict_output(self, spec: TensorSpec, output_name: str | None, rows: np.ndarray) -> np.ndarray:
        """The model's own predict on ``rows``, one numeric output (the explained function)."""
        requested = [output_name] if output_name else list(self.model.default_outputs)
        outputs = self.model.predict({spec.name: _as_input(rows, spec)}, requested, {})
        value = np.asarray(outputs[output_name] if output_name else next(iter(outputs.values())))
        if value.dtype.kind not in "biuf":
            raise NoExplainer(f"model '{self.model.name}': output '{output_name or next(iter(outputs))}' holds "
                              "labels, not numbers; set explainer.output to a numeric output (such as predict_proba)")
        value = value.astype(np.float64)
        return value.reshape(len(rows), -1) if value.ndim > 2 else value

    def _input_spec(self) -> TensorSpec:
        inputs = self.model.inputs
        if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].datatype not in NUMERIC_DATATYPES:
            described = ", ".join(f"'{s.name}' {s.describe()}" for s in inputs) or "undeclared inputs"
            raise NoExplainer(f"model '{self.model.name}' has no explainer for its inputs ({described}): the built-in "
                              "explainers take one 2-D numeric input (rows × features); add an explain() method "
                              "to model.py")
        return inputs[0]


def _rows(inputs: Tensors, spec: TensorSpec) -> np.ndarray:
    array = inputs.get(spec.name)
    if array is None and len(inputs) == 1:
        array = next(iter(inputs.values()))
    if array is None or array.ndim != 2 or array.dtype.kind not in "biuf":
        got = "nothing" if array is None else f"{array.dtype} with shape {list(array.shape)}"
        raise InvalidInput(f"input '{spec.name}': explanations take numeric rows × features, got {got}")
    if not len(array):
        raise InvalidInput(f"input '{spec.name}': no rows to explain")
    return array.astype(np.float64, copy=False)


def _as_input(rows: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return rows.astype(DATATYPE_TO_DTYPE.get(spec.datatype, np.float64), copy=False)


def _names(values: Any) -> list[str] | None:
    return [str(v) for v in values] if values is not None else None


_explainers: "weakref.WeakKeyDictionary[Model, BuiltinExplainer]" = weakref.WeakKeyDictionary()
_explainers_lock = threading.Lock()


def builtin_explainer(model: Model) -> BuiltinExplainer | None:
    """The built-in explainer of ``model`` (kept with the loaded model), or None when none applies: a
    model without a synchronous predict (a model.py), or one that is not a scikit-learn-style
    estimator and whose package has neither an ``explainer:`` section nor examples."""
    with _explainers_lock:
        explainer = _explainers.get(model)
        if explainer is None:
            settings = settings_of(model.source)
            if not _applies(model, settings):
                return None
            explainer = _explainers[model] = BuiltinExplainer(model, settings)
        return explainer


def _applies(model: Model, settings: Settings) -> bool:
    if getattr(model, "estimator", None) is not None:
        return True
    if type(model).predict is Model.predict:  # no synchronous predict to explain (model.py classes)
        return False
    return settings.configured or (package_folder(model.source) / EXAMPLES_FILE).is_file()
