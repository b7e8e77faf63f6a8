"""shap's explainers, chosen by model kind, with their attributions in one shape.

Attributions come back as ``values`` (rows × features, or rows × features × outputs) and
``base_values`` (one per output), so that ``values.sum(axis=1) + base_values`` is the explained
output of each row. shap is imported here, and only when an explainer is made.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from shipyard.runtimes.base import NoExplainer

ALGORITHMS = ("auto", "tree", "linear", "kernel", "permutation")
MODEL_AGNOSTIC = ("kernel", "permutation")
#: Modules of the tree ensembles shap's TreeExplainer reads.
TREE_MODULES = ("xgboost", "lightgbm", "catboost", "sklearn.tree", "sklearn.ensemble._forest",
                "sklearn.ensemble._gb", "sklearn.ensemble._iforest")

Predict = Callable[[np.ndarray], np.ndarray]


def import_shap() -> Any:
    try:
        import shap
    except ModuleNotFoundError:
        raise NoExplainer("built-in explanations need the shap library: pip install 'shipyard[explain]'") from None
    return shap


def is_tree(estimator: Any) -> bool:
    return type(estimator).__module__.startswith(TREE_MODULES)


def is_linear(estimator: Any) -> bool:
    return (type(estimator).__module__.startswith("sklearn.linear_model")
            and hasattr(estimator, "coef_") and hasattr(estimator, "intercept_"))


@dataclass
class Attributions:
    values: np.ndarray
    base_values: np.ndarray

    @property
    def explained(self) -> np.ndarray:
        """What the attributions add up to for each row: rows, or rows × outputs."""
        return self.values.sum(axis=1) + self.base_values if self.values.ndim == 3 else \
            self.values.sum(axis=1) + self.base_values[0]


class Explainer:
    """One shap explainer and how to call it."""

    def __init__(self, algorithm: str, explainer: Any, nsamples: int | None = None) -> None:
        self.algorithm = algorithm
        self.explainer = explainer
        self.nsamples = nsamples

    def attribute(self, rows: np.ndarray) -> Attributions:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.algorithm == "permutation":
                limit = max(self.nsamples or 500, 2 * rows.shape[1] + 1)
                result = self.explainer(rows, max_evals=limit, silent=True)
                values, base = result.values, np.asarray(result.base_values)[0] if len(rows) else 0.0
            elif self.algorithm == "kernel":
                values = self.explainer.shap_values(rows, nsamples=self.nsamples or "auto", silent=True)
                base = self.explainer.expected_value
            else:
                values = self.explainer.shap_values(rows)
                base = self.explainer.expected_value
        return normalise(values, base, len(rows), rows.shape[1])


def normalise(values: Any, base: Any, rows: int, features: int) -> Attributions:
    """Rows × features (one output) or rows × features × outputs, and one base value per output."""
    if isinstance(values, list):  # older shap: one array per output
        values = np.stack([np.asarray(v) for v in values], axis=-1)
    values = np.asarray(values, dtype=np.float64).reshape(rows, features, -1)
    base_values = np.atleast_1d(np.asarray(base, dtype=np.float64)).reshape(-1)
    if values.shape[2] == 1:
        values = values[:, :, 0]
    return Attributions(values, base_values)


def tree(estimator: Any) -> Explainer:
    """shap's TreeExplainer in its path-dependent mode: exact, no background needed."""
    shap = import_shap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer("tree", shap.TreeExplainer(estimator, feature_perturbation="tree_path_dependent"))


def linear(estimator: Any, background: np.ndarray) -> Explainer:
    """shap's LinearExplainer with the background as the features' distribution."""
    shap = import_shap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer("linear", shap.LinearExplainer(estimator, background))


def model_agnostic(algorithm: str, predict: Predict, background: np.ndarray, nsamples: int | None) -> Explainer:
    """Kernel SHAP, or the permutation explainer, over any predict function."""
    shap = import_shap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if algorithm == "kernel":
            return Explainer("kernel", shap.KernelExplainer(predict, background), nsamples)
        masker = shap.maskers.Independent(background, max_samples=len(background))
        return Explainer("permutation", shap.PermutationExplainer(predict, masker), nsamples)
