"""XGBoost runtime: a Booster (``.json``/``.ubj``/binary) or the scikit-learn wrapper."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shipyard.runtimes.estimator import EstimatorModel
from shipyard.runtimes.pickled import PICKLE_SUFFIXES, read_pickle


def import_xgboost() -> Any:
    try:
        import xgboost
    except ModuleNotFoundError:
        raise RuntimeError("serving XGBoost models needs xgboost: pip install 'shipyard[xgboost]'") from None
    return xgboost


class BoosterEstimator:
    """Gives a raw ``xgboost.Booster`` the estimator API; ``predict`` is ``inplace_predict``."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.n_features_in_ = booster.num_features()

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(features)


def as_estimator(loaded: Any) -> Any:
    """Wrap an unpickled Booster; pass scikit-learn wrappers through."""
    xgb = import_xgboost()
    return BoosterEstimator(loaded) if isinstance(loaded, xgb.Booster) else loaded


class XGBoostModel(EstimatorModel):
    """A Booster saved by the scikit-learn wrapper is served as that wrapper (labels + probabilities)."""

    format = "xgboost"

    def read_estimator(self) -> Any:
        xgb = import_xgboost()
        path = self.source.path
        if path.suffix in PICKLE_SUFFIXES:
            return as_estimator(read_pickle(path))
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"{path} is not an XGBoost model ({first})") from None
        wrapper = booster.attr("scikit_learn")
        if wrapper:
            kind = json.loads(wrapper).get("_estimator_type", "")
            estimator = xgb.XGBClassifier() if kind == "classifier" else xgb.XGBRegressor()
            estimator.load_model(str(path))
            return estimator
        return BoosterEstimator(booster)
