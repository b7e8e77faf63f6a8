"""Bias: demographic parity and equal opportunity differences by a protected attribute.

Needs predictions: the receiver pairs each request with its response by ``ce-id`` and feeds the rows
with their predictions. Each row is kept (the last ``window`` rows) with its group (the value of the
``protected`` feature), whether its prediction is positive, and later its label from ``POST /feedback``.

Positive: a prediction or label equal to ``positive_label`` (default 1; compared as text when either is
text); a number strictly between 0 and 1 that is not 0 or 1 is a probability of the positive class,
positive at >= 0.5; a list (class scores or probabilities) counts as its argmax.

Scores (label ``feature`` = the protected column; per-group ones also ``group``):
``positive_rate`` and ``rows`` per group; ``demographic_parity_difference`` = max - min positive rate
over groups with at least ``min_rows`` rows (alert above ``threshold``, default 0.1);
``true_positive_rate`` per group (rows labelled positive whose prediction is positive) and
``equal_opportunity_difference`` = max - min over groups with at least ``min_rows`` positive labels
(alert above ``threshold``). A difference needs two such groups.

``evaluate(batch, predictions, labels=None)`` computes the same on the batch alone (every group with a
row counts; the window is left as it is): ``group``, ``rows``, ``positive_rate`` and
``true_positive_rate`` (NaN without positive labels) per group, ``demographic_parity_difference``,
``equal_opportunity_difference`` (NaN when fewer than two groups qualify) and ``is_biased`` [1].
State kept across a restart: the window's rows with their groups, predictions and labels (so feedback
for an event logged before the restart still counts).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from shipyard.monitor.detectors.base import Detector, Score


class BiasDetector(Detector):
    name = "bias"
    needs_predictions = True
    outputs = (("group", "BYTES", (-1,)), ("rows", "INT64", (-1,)), ("positive_rate", "FP64", (-1,)),
               ("true_positive_rate", "FP64", (-1,)), ("demographic_parity_difference", "FP64", (1,)),
               ("equal_opportunity_difference", "FP64", (1,)), ("is_biased", "BOOL", (1,)))

    def __init__(self, protected: str | None = None, threshold: float = 0.1, window: int = 1000,
                 min_rows: int | None = None, positive_label: Any = 1) -> None:
        super().__init__()
        if not protected:
            raise ValueError("the bias detector needs the protected attribute's column (--protected COLUMN)")
        self.protected = protected
        self.threshold = threshold
        self.window = window
        self.min_rows = min_rows if min_rows is not None else 20
        self.positive_label = positive_label
        #: (event id, row index) -> [group, predicted positive, labelled positive or None]
        self._rows: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()
        self._anonymous = 0
        self.rows_seen = 0

    def fit(self, reference: Any) -> None:
        super().fit(reference)
        if self.protected not in self.columns:
            raise ValueError(f"the protected attribute {self.protected!r} is not a column of the reference "
                             f"({', '.join(self.columns)})")

    def positive(self, value: Any) -> bool:
        if isinstance(value, (list, tuple, np.ndarray)):
            flat = np.asarray(value).ravel()
            value = flat[0] if flat.size == 1 else int(np.argmax(flat.astype(float)))
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) or isinstance(self.positive_label, str):
            return str(value) == str(self.positive_label)
        if isinstance(value, bool):
            return value == bool(self.positive_label)
        number = float(value)
        if 0.0 < number < 1.0:
            return number >= 0.5
        return number == float(self.positive_label)

    def update(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
               event_id: str | None = None) -> list[Score]:
        if predictions is None:
            raise ValueError("the bias detector needs the predictions of each request")
        if len(predictions) != len(batch):
            raise ValueError(f"{len(batch)} rows but {len(predictions)} predictions")
        if event_id is None:
            self._anonymous += 1
            event_id = f"_anonymous-{self._anonymous}"
        for index, (group, prediction) in enumerate(zip(batch[self.protected], predictions)):
            self._rows[(event_id, index)] = [_group(group), self.positive(prediction), None]
        while len(self._rows) > self.window:
            self._rows.popitem(last=False)
        self.rows_seen += len(batch)
        return self._record(self._scores())

    def feedback(self, event_id: str, label: Any) -> list[Score]:
        count = 0
        while (event_id, count) in self._rows:
            count += 1
        if count == 0:
            raise KeyError(f"no prediction recorded for id {event_id!r} (unknown, not yet answered, or out of the window)")
        labels = list(label) if isinstance(label, (list, tuple)) and count > 1 else [label]
        if len(labels) != count:
            raise ValueError(f"id {event_id!r} has {count} rows but {len(labels)} labels were given")
        for index, value in enumerate(labels):
            self._rows[(event_id, index)][2] = self.positive(value)
        return self._record(self._scores())

    def _scores(self, rows: Sequence[list[Any]] | None = None, min_rows: int | None = None) -> list[Score]:
        feature = {"feature": self.protected}
        min_rows = self.min_rows if min_rows is None else min_rows
        by_group: dict[str, list[list[Any]]] = {}
        for row in (self._rows.values() if rows is None else rows):
            by_group.setdefault(row[0], []).append(row)
        scores: list[Score] = []
        rates: dict[str, float] = {}
        tprs: dict[str, float] = {}
        for group, members in sorted(by_group.items()):
            labels = {**feature, "group": group}
            rate = sum(r[1] for r in members) / len(members)
            scores += [Score("rows", float(len(members)), labels), Score("positive_rate", rate, labels)]
            if len(members) >= min_rows:
                rates[group] = rate
            positives = [r for r in members if r[2] is True]
            if positives:
                tpr = sum(r[1] for r in positives) / len(positives)
                scores.append(Score("true_positive_rate", tpr, labels))
                if len(positives) >= min_rows:
                    tprs[group] = tpr
        for metric, values in (("demographic_parity_difference", rates), ("equal_opportunity_difference", tprs)):
            if len(values) >= 2:
                difference = max(values.values()) - min(values.values())
                scores.append(Score(metric, difference, feature, alert=difference > self.threshold,
                                    threshold=self.threshold,
                                    details={"groups": {g: round(v, 6) for g, v in values.items()}}))
        return scores


    def evaluate(self, batch: pd.DataFrame, predictions: Sequence[Any] | None = None,
                 labels: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        if predictions is None:
            raise ValueError("the bias detector needs the predictions: send them as an input named 'prediction'")
        if len(predictions) != len(batch):
            raise ValueError(f"{len(batch)} rows but {len(predictions)} predictions")
        if labels is not None and len(labels) != len(batch):
            raise ValueError(f"{len(batch)} rows but {len(labels)} labels")
        rows = [[_group(group), self.positive(prediction), None if labels is None else self.positive(labels[i])]
                for i, (group, prediction) in enumerate(zip(batch[self.protected], predictions))]
        scores = self._scores(rows, min_rows=1)
        groups = sorted({row[0] for row in rows})
        by = {(s.metric, s.labels.get("group")): s.value for s in scores}
        nan = float("nan")
        parity = by.get(("demographic_parity_difference", None), nan)
        opportunity = by.get(("equal_opportunity_difference", None), nan)
        return {
            "group": np.array(groups, dtype=object),
            "rows": np.array([int(by[("rows", g)]) for g in groups], dtype=np.int64),
            "positive_rate": np.array([by[("positive_rate", g)] for g in groups], dtype=np.float64),
            "true_positive_rate": np.array([by.get(("true_positive_rate", g), nan) for g in groups], dtype=np.float64),
            "demographic_parity_difference": np.array([parity]),
            "equal_opportunity_difference": np.array([opportunity]),
            "is_biased": np.array([bool(parity > self.threshold or opportunity > self.threshold)]),
        }

    def state(self) -> dict[str, Any]:
        rows = [[event_id, index, *row] for (event_id, index), row in self._rows.items()]
        return {**super().state(), "rows": rows, "anonymous": self._anonymous, "rows_seen": self.rows_seen}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._rows = OrderedDict()
        for event_id, index, group, predicted, labelled in state.get("rows", []):
            self._rows[(str(event_id), int(index))] = [str(group), bool(predicted),
                                                       None if labelled is None else bool(labelled)]
        while len(self._rows) > self.window:
            self._rows.popitem(last=False)
        self._anonymous = int(state.get("anonymous", 0))
        self.rows_seen = int(state.get("rows_seen", len(self._rows)))


def _group(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
