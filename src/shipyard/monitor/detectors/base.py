"""The detector plug-in interface: what ``shipyard monitor serve`` feeds with logged traffic.

A detector is a class with:

``name`` (class attribute)
    The value of the ``detector`` label on its Prometheus metrics (``drift``, ``outlier``, ``bias``).
``needs_predictions`` (class attribute, default False)
    False: the receiver feeds it the rows of each ``org.kubeflow.serving.inference.request`` event as it
    arrives. True: the receiver holds a request until the response with the same ``ce-id`` arrives (either
    may come first) and feeds the rows together with the predictions.
``__init__(**options)``
    Keyword options only. The receiver passes those the constructor's signature names (``window``,
    ``alpha``, ``threshold``, ``min_rows``, ``protected``, ...) and drops the rest, so a custom detector
    takes what it needs.
``fit(reference)``
    The reference sample: a ``pandas.DataFrame`` (its columns are the feature names) or a numpy array
    (columns named ``f0``, ``f1``, ...). Sets ``self.columns`` (``Detector.fit`` does this; call it).
``update(batch, predictions=None, event_id=None) -> list[Score]``
    New rows (a DataFrame with ``self.columns``, dtypes coerced to the reference's by ``prepare``), the
    predictions (one per row, only when ``needs_predictions``), and the ``ce-id`` of the event. Returns
    the scores this batch produced; an empty list while the detector is still warming up.
``feedback(event_id, label) -> list[Score]`` (optional)
    A ground-truth label for an earlier event (``POST /feedback``); a list of labels for a multi-row
    request. Raises ``KeyError`` for an unknown id; the default raises ``FeedbackUnsupported``.
``metrics() -> list[Score]``
    The latest window scores (what ``/metrics`` shows). ``Detector.metrics`` returns those passed
    through ``self._record``.
``evaluate(batch, predictions=None, labels=None) -> dict[str, numpy.ndarray]`` (optional)
    Score rows on their own, without touching the window: what ``POST /v2/models/NAME/infer`` answers
    (the keys are the output tensors' names). ``outputs`` (class attribute) lists ``(name, datatype,
    shape)`` for the model's metadata. The default raises ``EvaluateUnsupported`` (answered with 400).
``state() -> dict`` / ``restore(state)`` (optional)
    What survives a restart (the window, counts, feedback), as plain JSON values; ``restore`` is called
    after ``fit`` with what ``state`` returned in an earlier run on the same reference and options.
    ``Detector``'s versions keep the latest window scores; subclasses add their own and call them.

A ``Score`` is one number: ``metric`` (the ``statistic`` label: ``p_value``, ``outlier_rate``, ...),
``value``, ``labels`` (``feature``, and ``group`` for per-group scores), ``alert`` (True when it is over
its ``threshold``), and ``instance`` (a per-row score: returned to the caller, counted, never exported as
a gauge nor alerted on one by one). ``details`` travel with an alert (for example the drifted features).

Detectors are loaded by name (``drift``, ``outlier``, ``bias``) or by ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

BUILTINS = {
    "drift": "shipyard.monitor.detectors.drift:DriftDetector",
    "outlier": "shipyard.monitor.detectors.outlier:OutlierDetector",
    "bias": "shipyard.monitor.detectors.bias:BiasDetector",
}


class BadBatch(ValueError):
    """Rows that cannot be scored (missing columns, text where the reference has numbers, ...)."""


class FeedbackUnsupported(ValueError):
    """This detector takes no labels."""


class EvaluateUnsupported(ValueError):
    """This detector only scores traffic it receives as events (it has no ``evaluate``)."""


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    alert: bool = False
    threshold: float | None = None
    instance: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.metric, tuple(sorted(self.labels.items()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "value": _plain(self.value), "labels": dict(self.labels),
                               "alert": self.alert}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.details:
            out["details"] = {k: _plain(v) for k, v in self.details.items()}
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def as_frame(data: Any, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a 1-D/2-D array or a list of rows (array columns: f0, f1, ...)."""
    if isinstance(data, pd.DataFrame):
        return data
    array = np.asarray(data)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise BadBatch(f"expected 2-D data (rows x features), got shape {list(array.shape)}")
    names = list(columns) if columns is not None else [f"f{i}" for i in range(array.shape[1])]
    if len(names) != array.shape[1]:
        raise BadBatch(f"rows have {array.shape[1]} values but there are {len(names)} features ({', '.join(names)})")
    return pd.DataFrame(array, columns=names)


class Detector(ABC):
    name: ClassVar[str] = "detector"
    needs_predictions: ClassVar[bool] = False
    #: The output tensors of ``evaluate``: (name, V2 datatype, shape with -1 for a variable dimension).
    outputs: ClassVar[tuple[tuple[str, str, tuple[int, ...]], ...]] = ()

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.dtypes: dict[str, Any] = {}
        self._latest: dict[Any, Score] = {}

    def fit(self, reference: Any) -> None:
        frame = as_frame(reference)
        if frame.empty:
            raise ValueError("the reference sample is empty")
        self.columns = [str(c) for c in frame.columns]
        frame.columns = self.columns
        self.dtypes = dict(frame.dtypes)
        self.reference = frame

    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if is_numeric(self.dtypes[c])]

    def prepare(self, batch: Any) -> pd.DataFrame:
        """The batch with the reference's columns, in order, numeric ones coerced to numbers."""
        frame = as_frame(batch, self.columns if not isinstance(batch, pd.DataFrame) else None)
        frame.columns = [str(c) for c in frame.columns]
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise BadBatch(f"rows lack the feature(s) {', '.join(missing)} (the reference has {', '.join(self.columns)})")
        frame = frame[self.columns].copy()
        for column in self.numeric_columns():
            try:
                frame[column] = pd.to_numeric(frame[column]).astype(float)
            except (ValueError, TypeError):
                bad = next((v for v in frame[column] if _not_number(v)), None)
                raise BadBatch(f"feature {column!r} is numeric in the reference but got {bad!r}") from None
        return frame

    @abstractmethod
    def update(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
               event_id: str | None = None) -> list[Score]:
        ...

    def feedback(self, event_id: str, label: Any) -> list[Score]:
        raise FeedbackUnsupported(f"the {self.name} detector takes no feedback")

    def metrics(self) -> list[Score]:
        return list(self._latest.values())

    def evaluate(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
                 labels: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        raise EvaluateUnsupported(f"the {self.name} detector does not score requests on their own; send it "
                                  "traffic as CloudEvents")

    def state(self) -> dict[str, Any]:
        return {"latest": [score_state(s) for s in self._latest.values()]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._latest = {}
        for item in state.get("latest", []):
            score = score_from_state(item)
            self._latest[score.key] = score

    def _record(self, scores: list[Score]) -> list[Score]:
        for score in scores:
            if not score.instance:
                self._latest[score.key] = score
        return scores


def score_state(score: Score) -> dict[str, Any]:
    """A Score as plain JSON values (``score_from_state`` reads it back)."""
    return {"metric": score.metric, "value": _plain(float(score.value)), "labels": dict(score.labels),
            "alert": bool(score.alert), "threshold": _plain(score.threshold), "instance": bool(score.instance),
            "details": {k: _plain(v) for k, v in score.details.items()}}


def score_from_state(item: Mapping[str, Any]) -> Score:
    value = item.get("value")
    return Score(str(item["metric"]), float("nan") if value is None else float(value),
                 {str(k): str(v) for k, v in (item.get("labels") or {}).items()}, bool(item.get("alert")),
                 item.get("threshold"), bool(item.get("instance")), dict(item.get("details") or {}))


def frame_state(frame: pd.DataFrame) -> dict[str, Any]:
    """Rows as plain JSON values (column names and a list of rows); ``frame_from_state`` reads it back."""
    rows = [[_plain(v) if not _missing(v) else None for v in row] for row in frame.itertuples(index=False)]
    return {"columns": [str(c) for c in frame.columns], "rows": rows}


def frame_from_state(item: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(item.get("rows") or [], columns=list(item.get("columns") or []))


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def is_numeric(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _not_number(value: Any) -> bool:
    try:
        float(value)
        return False
    except (TypeError, ValueError):
        return True


def detector_class(spec: str) -> type[Detector]:
    """``drift``/``outlier``/``bias`` or ``package.module:Class``."""
    target = BUILTINS.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"unknown detector {spec!r}: use one of {', '.join(BUILTINS)} or 'package.module:Class'")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for detector {spec!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not all(hasattr(cls, a) for a in ("fit", "update", "metrics")):
        raise ValueError(f"{target!r} is not a detector class (it needs fit, update and metrics)")
    return cls


def load_detector(spec: str, **options: Any) -> Detector:
    """Instantiate a detector with the options its constructor accepts (None values are left out)."""
    cls = detector_class(spec)
    parameters = inspect.signature(cls).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    chosen = {k: v for k, v in options.items() if v is not None and (takes_all or k in parameters)}
    return cls(**chosen)
