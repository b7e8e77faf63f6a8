"""scikit-learn runtime: a fitted estimator or pipeline saved with joblib or pickle."""

from __future__ import annotations

from typing import Any

from shipyard.runtimes.estimator import EstimatorModel
from shipyard.runtimes.pickled import module_of, read_pickle


class SKLearnModel(EstimatorModel):
    """Serves ``predict`` and, for classifiers, ``predict_proba``."""

    format = "sklearn"

    def read_estimator(self) -> Any:
        estimator = read_pickle(self.source.path)
        owner = module_of(estimator)
        if owner == "xgboost":
            from shipyard.runtimes.xgboost import as_estimator
        elif owner == "lightgbm":
            from shipyard.runtimes.lightgbm import as_estimator
        else:
            return estimator
        self.format = owner  # a library's own object in a pickle: report the library truthfully
        return as_estimator(estimator)
