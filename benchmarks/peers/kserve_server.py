"""KServe peer for the benchmark: one model behind ``kserve.ModelServer``.

Runs in benchmarks/.venvs/kserve (``pip install kserve``), never in Shipyard's venv. The model class
does what KServe's own sklearnserver/xgbserver predictors do (``python/sklearnserver`` and
``python/xgbserver`` in the KServe repository, which are not published on PyPI):

* ``load`` reads a joblib/pickle file with ``joblib.load``, or an XGBoost ``.json``/``.ubj`` model
  saved by the scikit-learn wrapper (loaded back as ``XGBClassifier``/``XGBRegressor`` so it
  answers with labels, like Shipyard and MLServer do for the same file);
* ``predict`` takes ``inputs[0]`` of a V2 ``InferRequest`` (or V1 ``instances``) through
  ``kserve.utils.utils.get_predict_input``, calls the model's ``predict`` and answers with
  ``get_predict_response``, which names the output ``output-0``.

Usage (KServe's own flags such as ``--workers`` pass straight through to ``kserve.ModelServer``):

    kserve_server.py --model_path M.joblib --model_name iris --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any, Dict, Optional, Union

import joblib
import kserve
from kserve import Model
from kserve.errors import InferenceError
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.utils.utils import get_predict_input, get_predict_response

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
XGBOOST_SUFFIXES = (".json", ".ubj", ".bst")
ENV_PREDICT_PROBA = "PREDICT_PROBA"


def load_xgboost(path: pathlib.Path) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(path))
    wrapper = booster.attr("scikit_learn")
    if not wrapper:
        return booster
    kind = json.loads(wrapper).get("_estimator_type", "")
    estimator = xgb.XGBClassifier() if kind == "classifier" else xgb.XGBRegressor()
    estimator.load_model(str(path))
    return estimator


class SKLearnLikeModel(Model):
    """KServe's sklearnserver ``SKLearnModel``, reading one file instead of a storage URI."""

    def __init__(self, name: str, model_path: str) -> None:
        super().__init__(name)
        self.model_path = pathlib.Path(model_path)
        self.ready = False
        self._model: Any = None

    def load(self) -> bool:
        if self.model_path.suffix in PICKLE_SUFFIXES:
            self._model = joblib.load(self.model_path)
        elif self.model_path.suffix in XGBOOST_SUFFIXES:
            self._model = load_xgboost(self.model_path)
        else:
            raise RuntimeError(f"unsupported model file {self.model_path}")
        self.ready = True
        return self.ready

    def predict(
        self, payload: Union[Dict, InferRequest], headers: Optional[Dict[str, str]] = None
    ) -> Union[Dict, InferResponse]:
        try:
            instances = get_predict_input(payload)
            if os.environ.get(ENV_PREDICT_PROBA, "false").lower() == "true" and hasattr(self._model, "predict_proba"):
                result = self._model.predict_proba(instances)
            else:
                result = self._model.predict(instances)
            return get_predict_response(payload, result, self.name)
        except Exception as exc:  # as sklearnserver does
            raise InferenceError(str(exc))


def main() -> None:
    # kserve.model_server parses its own flags (--http_port, --grpc_port, --workers, ...) from
    # sys.argv at import time, so parse only ours here and leave the rest to it.
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    model = SKLearnLikeModel(args.model_name, args.model_path)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
