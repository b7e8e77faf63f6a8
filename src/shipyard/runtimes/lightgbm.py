"""LightGBM runtime: a Booster text model (``.txt``) or the scikit-learn wrapper."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.runtimes.estimator import EstimatorModel
from shipyard.runtimes.pickled import PICKLE_SUFFIXES, read_pickle


def import_lightgbm() -> Any:
    try:
        import lightgbm
    except ModuleNotFoundError:
        raise RuntimeError("serving LightGBM models needs lightgbm: pip install 'shipyard[lightgbm]'") from None
    return lightgbm


class LightGBMBoosterEstimator:
    """Gives a ``lightgbm.Booster`` the estimator API."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.n_features_in_ = booster.num_feature()

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)


def as_estimator(loaded: Any) -> Any:
    """Wrap an unpickled Booster; pass scikit-learn wrappers through."""
    lgb = import_lightgbm()
    return LightGBMBoosterEstimator(loaded) if isinstance(loaded, lgb.Booster) else loaded


class LightGBMModel(EstimatorModel):
    format = "lightgbm"

    def read_estimator(self) -> Any:
        lgb = import_lightgbm()
        path = self.source.path
        if path.suffix in PICKLE_SUFFIXES:
            return as_estimator(read_pickle(path))
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ValueError(f"{path} is not a LightGBM model ({exc})") from None
        return LightGBMBoosterEstimator(booster)
