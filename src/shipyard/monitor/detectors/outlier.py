"""Outliers: an isolation forest or a Mahalanobis distance, fitted on the reference's numeric features.

Each row gets a score, higher meaning more unusual: ``-IsolationForest.score_samples`` (``method=
"isolation_forest"``, the default; ``seed`` fixes the forest) or the Mahalanobis distance to the
reference's mean under its covariance (``method="mahalanobis"``; a pseudo-inverse, so collinear features
are fine). A row is an outlier when its score is above ``score_threshold``, by default the
``percentile``-th (99th) percentile of the reference's own scores. Non-numeric features are ignored;
missing values are filled with the reference's median.

Scores: per row ``outlier_score`` (``instance``: returned to the caller, not exported; ``alert`` when the
row is an outlier, ``threshold`` the score threshold); and once the window of the last ``window`` rows
holds ``min_rows``, ``outlier_rate`` (alert when above ``threshold``, default 0.05) and
``score_threshold`` with ``feature="_all"``.

``evaluate(batch)`` scores rows without adding them to the window: ``is_outlier`` and ``outlier_score``
per row, ``outlier_rate`` [1] of the batch and ``threshold`` [1] (the score threshold). State kept
across a restart: the window's outlier flags and the count of rows seen (the model is fitted again on
the same reference, deterministically with ``seed``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from shipyard.monitor.detectors.base import Detector, Score

ALL = "_all"
METHODS = ("isolation_forest", "mahalanobis")


class OutlierDetector(Detector):
    name = "outlier"
    outputs = (("is_outlier", "BOOL", (-1,)), ("outlier_score", "FP64", (-1,)), ("outlier_rate", "FP64", (1,)),
               ("threshold", "FP64", (1,)))

    def __init__(self, method: str = "isolation_forest", window: int = 200, min_rows: int | None = None,
                 threshold: float = 0.05, score_threshold: float | None = None, percentile: float = 99.0,
                 seed: int = 0) -> None:
        super().__init__()
        method = method.replace("-", "_")
        if method not in METHODS:
            raise ValueError(f"unknown outlier method {method!r}: use isolation_forest or mahalanobis")
        self.method = method
        self.window = window
        self.min_rows = min(window, min_rows if min_rows is not None else min(window, 50))
        self.threshold = threshold
        self.score_threshold = score_threshold
        self.percentile = percentile
        self.seed = seed
        self._flags: deque[bool] = deque(maxlen=window)
        self.rows_seen = 0

    def fit(self, reference: Any) -> None:
        super().fit(reference)
        self.features = self.numeric_columns()
        if not self.features:
            raise ValueError("the outlier detector needs at least one numeric feature in the reference")
        data = self.reference[self.features].astype(float)
        self._fill = data.median()
        x = data.fillna(self._fill).to_numpy()
        if self.method == "isolation_forest":
            from sklearn.ensemble import IsolationForest

            self._forest = IsolationForest(n_estimators=100, random_state=self.seed).fit(x)
        else:
            self._mean = x.mean(axis=0)
            self._inverse = np.linalg.pinv(np.atleast_2d(np.cov(x, rowvar=False)))
        if self.score_threshold is None:
            self.score_threshold = float(np.percentile(self.score(x), self.percentile))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Outlier scores of a numeric matrix with the fitted features (higher: more unusual)."""
        if self.method == "isolation_forest":
            return -self._forest.score_samples(x)
        delta = x - self._mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, self._inverse, delta), 0.0))

    def update(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
               event_id: str | None = None) -> list[Score]:
        if len(batch) == 0:
            return []
        x = batch[self.features].astype(float).fillna(self._fill).to_numpy()
        scores = self.score(x)
        flags = scores > self.score_threshold
        self._flags.extend(bool(f) for f in flags)
        self.rows_seen += len(batch)
        out = [Score("outlier_score", float(s), {"row": str(i)}, alert=bool(f), threshold=self.score_threshold,
                     instance=True) for i, (s, f) in enumerate(zip(scores, flags))]
        if len(self._flags) >= self.min_rows:
            rate = sum(self._flags) / len(self._flags)
            out.append(Score("outlier_rate", rate, {"feature": ALL}, alert=rate > self.threshold,
                             threshold=self.threshold, details={"rows": len(self._flags), "method": self.method}))
            out.append(Score("score_threshold", float(self.score_threshold), {"feature": ALL}))
        return self._record(out)

    def evaluate(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
                 labels: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        x = batch[self.features].astype(float).fillna(self._fill).to_numpy()
        scores = self.score(x) if len(x) else np.zeros(0)
        flags = scores > self.score_threshold
        return {"is_outlier": flags, "outlier_score": scores.astype(np.float64),
                "outlier_rate": np.array([flags.mean() if len(flags) else 0.0]),
                "threshold": np.array([self.score_threshold], dtype=np.float64)}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "flags": [bool(f) for f in self._flags], "rows_seen": self.rows_seen}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._flags.clear()
        self._flags.extend(bool(f) for f in state.get("flags", []))
        self.rows_seen = int(state.get("rows_seen", len(self._flags)))
