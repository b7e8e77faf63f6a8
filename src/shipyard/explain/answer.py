"""The JSON answer of ``:explain`` / ``/explain``.

::

    {"model_name": "iris", "explainer": "shap", "algorithm": "tree",
     "output": "margin",              # what the attributions add up to: prediction | probability | margin
     "output_name": null,             # the output tensor explained (model-agnostic explainers)
     "output_names": ["0", "1", "2"], # one per explained output, when known (classes)
     "feature_names": ["sepal_length", ...],
     "base_values": [0.1, ...],       # one per output
     "attributions": [[...], ...],    # rows × features, or rows × features × outputs
     "predictions": [...]}            # the model's own answer for those rows

V1 answers add KServe's ``explanations``: one object per instance with its ``prediction``,
``base_values`` and ``attributions``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.explain.algorithms import Attributions

EXPLAINER = "shap"


def explanation(model_name: str, algorithm: str, output: str, feature_names: list[str],
                attributions: Attributions, predictions: np.ndarray, output_name: str | None = None,
                output_names: list[str] | None = None) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "explainer": EXPLAINER,
        "algorithm": algorithm,
        "output": output,
        "output_name": output_name,
        "output_names": output_names,
        "feature_names": feature_names,
        "base_values": attributions.base_values.tolist(),
        "attributions": attributions.values.tolist(),
        "predictions": _plain(np.asarray(predictions).tolist()),
    }


def with_v1_explanations(answer: Any) -> Any:
    """Add KServe V1's per-instance ``explanations`` to a built-in answer (others pass unchanged)."""
    if not (isinstance(answer, dict) and answer.get("explainer") == EXPLAINER and "attributions" in answer
            and "explanations" not in answer):
        return answer
    predictions = answer.get("predictions") or [None] * len(answer["attributions"])
    answer["explanations"] = [
        {"prediction": prediction, "base_values": answer["base_values"], "attributions": row}
        for prediction, row in zip(predictions, answer["attributions"])
    ]
    return answer


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
