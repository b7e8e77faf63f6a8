"""Data drift: Kolmogorov-Smirnov per numeric feature, chi-squared per categorical feature.

The window is the last ``window`` rows received. Once it holds ``min_rows`` rows, every update tests
each feature of the window against the reference: ``scipy.stats.ks_2samp`` for numeric features,
``scipy.stats.chi2_contingency`` on the 2 x K table of category counts (reference, window) for the
others (strings, booleans, and the columns named in ``categorical``). The p-values are corrected for
testing several features at once (``bonferroni``, the default: p * m capped at 1; or ``bh``:
Benjamini-Hochberg adjusted p-values), and the window has drifted when any corrected p-value is below
``alpha``. A feature whose window values are all missing is skipped.

Scores (label ``feature``): ``ks_statistic`` or ``chi2_statistic``, ``p_value``, ``p_value_corrected``,
``drift`` (0/1) per feature; ``drift`` (alert when 1, threshold ``alpha``, details: the drifted features)
and ``min_p_value_corrected`` for ``feature="_all"``.

``evaluate(batch)`` tests the batch alone against the reference (the window is left as it is) and
returns ``is_drift`` [1], and per tested feature ``feature``, ``statistic`` (KS or chi-squared),
``p_value``, ``p_value_corrected`` and ``drift``, plus ``threshold`` [1] (``alpha``). State kept across
a restart: the window's rows and the count of rows seen.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from shipyard.monitor.detectors.base import Detector, Score, frame_from_state, frame_state

ALL = "_all"
CORRECTIONS = ("bonferroni", "bh")


def bonferroni(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(p_values, dtype=float)
    return np.minimum(p * len(p), 1.0)


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """BH adjusted p-values (step-up): reject those below alpha to control the false discovery rate."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def correct(p_values: Sequence[float], method: str) -> np.ndarray:
    if method == "bonferroni":
        return bonferroni(p_values)
    if method in ("bh", "fdr_bh", "benjamini-hochberg"):
        return benjamini_hochberg(p_values)
    raise ValueError(f"unknown correction {method!r}: use bonferroni or bh")


class DriftDetector(Detector):
    name = "drift"
    outputs = (("is_drift", "BOOL", (1,)), ("feature", "BYTES", (-1,)), ("statistic", "FP64", (-1,)),
               ("p_value", "FP64", (-1,)), ("p_value_corrected", "FP64", (-1,)), ("drift", "BOOL", (-1,)),
               ("threshold", "FP64", (1,)))

    def __init__(self, window: int = 200, min_rows: int | None = None, alpha: float = 0.05,
                 correction: str = "bonferroni", categorical: Sequence[str] | None = None) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be at least 1")
        if correction not in CORRECTIONS and correction not in ("fdr_bh", "benjamini-hochberg"):
            raise ValueError(f"unknown correction {correction!r}: use bonferroni or bh")
        if not 0 < alpha < 1:
            raise ValueError("alpha must be between 0 and 1")
        self.window = window
        self.min_rows = min(window, min_rows if min_rows is not None else min(window, 50))
        self.alpha = alpha
        self.correction = correction
        self.categorical = set(categorical or ())
        self._rows: deque[pd.DataFrame] = deque()
        self._count = 0
        self.rows_seen = 0

    def fit(self, reference: Any) -> None:
        super().fit(reference)
        self.categorical_columns = [c for c in self.columns if c in self.categorical or c not in self.numeric_columns()]
        self.numeric = [c for c in self.columns if c not in self.categorical_columns]
        self._ref_numeric = {c: self.reference[c].dropna().to_numpy(dtype=float) for c in self.numeric}
        self._ref_counts = {c: self.reference[c].dropna().astype(str).value_counts() for c in self.categorical_columns}

    def _window(self) -> pd.DataFrame:
        frame = pd.concat(list(self._rows), ignore_index=True) if len(self._rows) > 1 else self._rows[0]
        if len(frame) > self.window:
            frame = frame.iloc[-self.window:].reset_index(drop=True)
        self._rows = deque([frame])
        self._count = len(frame)
        return frame

    def update(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
               event_id: str | None = None) -> list[Score]:
        if len(batch) == 0:
            return []
        self._rows.append(batch)
        self._count += len(batch)
        self.rows_seen += len(batch)
        if self._count < self.min_rows:
            return []
        return self._record(self.test(self._window()))

    def test(self, window: pd.DataFrame) -> list[Score]:
        """Test a window against the reference (no state change)."""
        tested: list[tuple[str, str, float, float]] = []  # feature, statistic name, statistic, p
        for column in self.numeric:
            values = window[column].dropna().to_numpy(dtype=float)
            if len(values) == 0 or len(self._ref_numeric[column]) == 0:
                continue
            result = stats.ks_2samp(self._ref_numeric[column], values)
            tested.append((column, "ks_statistic", float(result.statistic), float(result.pvalue)))
        for column in self.categorical_columns:
            values = window[column].dropna().astype(str)
            if len(values) == 0:
                continue
            reference = self._ref_counts[column]
            current = values.value_counts()
            categories = sorted(set(reference.index) | set(current.index))
            if len(categories) < 2:
                tested.append((column, "chi2_statistic", 0.0, 1.0))
                continue
            table = np.array([[reference.get(k, 0) for k in categories], [current.get(k, 0) for k in categories]])
            statistic, p_value, _, _ = stats.chi2_contingency(table)
            tested.append((column, "chi2_statistic", float(statistic), float(p_value)))
        if not tested:
            return []
        corrected = correct([t[3] for t in tested], self.correction)
        scores: list[Score] = []
        drifted: list[str] = []
        for (column, statistic_name, statistic, p_value), p_corrected in zip(tested, corrected):
            labels = {"feature": column}
            is_drift = bool(p_corrected < self.alpha)
            if is_drift:
                drifted.append(column)
            scores += [
                Score(statistic_name, statistic, labels),
                Score("p_value", p_value, labels),
                Score("p_value_corrected", float(p_corrected), labels, threshold=self.alpha),
                Score("drift", float(is_drift), labels),
            ]
        scores.append(Score("min_p_value_corrected", float(np.min(corrected)), {"feature": ALL}, threshold=self.alpha))
        scores.append(Score("drift", float(bool(drifted)), {"feature": ALL}, alert=bool(drifted),
                            threshold=self.alpha,
                            details={"features": drifted, "correction": self.correction, "rows": len(window)}))
        return scores

    def evaluate(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
                 labels: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        scores = self.test(batch) if len(batch) else []
        per_feature: dict[str, dict[str, float]] = {}
        for score in scores:
            feature = score.labels.get("feature", ALL)
            if feature != ALL:
                key = "statistic" if score.metric.endswith("_statistic") else score.metric
                per_feature.setdefault(feature, {})[key] = score.value
        features = list(per_feature)
        column = lambda key: np.array([per_feature[f][key] for f in features], dtype=np.float64)  # noqa: E731
        return {
            "is_drift": np.array([any(per_feature[f]["drift"] for f in features)]),
            "feature": np.array(features, dtype=object),
            "statistic": column("statistic"),
            "p_value": column("p_value"),
            "p_value_corrected": column("p_value_corrected"),
            "drift": column("drift").astype(bool),
            "threshold": np.array([self.alpha], dtype=np.float64),
        }

    def state(self) -> dict[str, Any]:
        rows = self._window() if self._rows else self.reference.iloc[:0]
        return {**super().state(), "window": frame_state(rows), "rows_seen": self.rows_seen}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        window = frame_from_state(state.get("window") or {})
        self._rows = deque([self.prepare(window)]) if len(window) else deque()
        self._count = len(window)
        if self._rows:
            self._window()  # a smaller window than the saved one keeps the newest rows
        self.rows_seen = int(state.get("rows_seen", self._count))
