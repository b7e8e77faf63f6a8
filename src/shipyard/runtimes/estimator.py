"""Models with the scikit-learn estimator API (``predict`` and optionally ``predict_proba``).

Used by the scikit-learn runtime and by the XGBoost and LightGBM scikit-learn wrappers.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import Model, TensorSpec, Tensors, empty_like_spec, spec_of

INPUT_NAME = "input-0"
#: Request parameter (or package option) that makes ``predict_proba`` the default output.
PROBA_PARAMETER = "predict_proba"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


class EstimatorModel(Model):
    """Serves an in-memory estimator; subclasses say how the artifact becomes one."""

    format = "sklearn"
    batchable = True
    inline_when_fast = True
    fork_safe = True

    def __init__(self, source) -> None:  # type: ignore[no-untyped-def]
        super().__init__(source)
        self.estimator: Any = None

    def read_estimator(self) -> Any:
        raise NotImplementedError

    def load(self) -> None:
        estimator = self.read_estimator()
        if not callable(getattr(estimator, "predict", None)):
            raise TypeError(
                f"{self.source.path} holds a {type(estimator).__name__}, which has no predict(); "
                "expected a fitted scikit-learn-style estimator"
            )
        self.estimator = estimator
        self._describe()

    def _methods(self) -> list[str]:
        methods = ["predict"]
        if hasattr(self.estimator, "predict_proba") and hasattr(self.estimator, "classes_"):
            methods.append("predict_proba")
        return methods

    def _describe(self) -> None:
        features = getattr(self.estimator, "n_features_in_", None)
        self.inputs = [TensorSpec(INPUT_NAME, "FP64", (-1, int(features) if features else -1))]
        self.outputs = [self._probe(method, features) for method in self._methods()]
        proba = _truthy(self.source.options.get(PROBA_PARAMETER, False)) and len(self.outputs) > 1
        self.default_outputs = ["predict_proba" if proba else "predict"]

    def _probe(self, method: str, features: int | None) -> TensorSpec:
        """Learn an output's true datatype and shape by predicting on one row of zeros."""
        if features:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sample = getattr(self.estimator, method)(np.zeros((1, int(features))))
                return spec_of(method, np.asarray(sample))
            except Exception:  # a pipeline that needs other input: fall back to what we know
                pass
        if method == "predict_proba":
            return TensorSpec(method, "FP64", (-1, len(self.estimator.classes_)))
        classes = getattr(self.estimator, "classes_", None)
        datatype = "BYTES" if classes is not None and np.asarray(classes).dtype.kind in "OUS" else "FP64"
        if classes is not None and np.asarray(classes).dtype.kind in "iu":
            datatype = "INT64"
        return TensorSpec(method, datatype, (-1,))

    def select_outputs(self, requested: list[str] | None, parameters: dict[str, Any]) -> list[str]:
        if not requested and PROBA_PARAMETER in parameters:
            if "predict_proba" not in self._methods():
                raise InvalidInput(f"model '{self.name}' has no predict_proba (it is not a probabilistic classifier)")
            return ["predict_proba"] if _truthy(parameters[PROBA_PARAMETER]) else ["predict"]
        return super().select_outputs(requested, parameters)

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        features = inputs[INPUT_NAME]
        if features.shape[0] == 0:  # estimators refuse empty input; an empty batch has empty answers
            return {spec.name: empty_like_spec(spec) for spec in self.outputs if spec.name in outputs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "X does not have valid feature names"
            return {name: np.asarray(getattr(self.estimator, name)(features)) for name in outputs}
