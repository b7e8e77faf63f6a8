"""The ``shap`` format: an explainer component that explains a predictor over the network.

A folder with a background sample (``background.csv|parquet|npy``, or a ``shipyard.yaml`` whose
``explainer:`` section names it) served with ``shipyard serve FOLDER --predictor-url URL``. It
holds no model: ``explain`` runs a model-agnostic SHAP explainer (kernel, or permutation) whose
predict function calls the predictor (``ModelSource.options["upstream"]``) with
``{input_name: rows}``, and explains its ``output-0`` (or first, or ``explainer.output``) output.
A predict sent to the explainer is forwarded to the predictor as it is.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from shipyard.explain import algorithms
from shipyard.explain.answer import explanation
from shipyard.explain.background import DEFAULT_FILES, Background, BackgroundError, load_background
from shipyard.explain.settings import DEFAULT_INPUT, declared_columns, package_folder, settings_of
from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import HEADERS_PARAMETER, Model, ModelSource, NoExplainer, TensorSpec, Tensors

NEEDS_PREDICTOR = "the shap format explains a predictor over the network: run it with --predictor-url"
DEFAULT_OUTPUT = "output-0"


class ShapExplainerModel(Model):
    """Explains the upstream predictor; predicts by forwarding to it."""

    format = "shap"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.upstream: Any = source.options.get("upstream")
        self.settings = settings_of(source)
        self.input_name = self.settings.input_name or DEFAULT_INPUT
        self.background: Background | None = None
        self.algorithm = "kernel"
        self.feature_names: list[str] = []
        self._explainer: algorithms.Explainer | None = None
        self._lock = threading.Lock()
        #: The passed headers of the explanation being computed, and the predictor output it explains.
        self._call_headers: Any = None
        self._output_name: str | None = None

    def load(self) -> None:
        if self.upstream is None:
            raise RuntimeError(f"model '{self.name}': {NEEDS_PREDICTOR}")
        algorithm = self.settings.algorithm
        if algorithm in ("tree", "linear"):
            raise ValueError(f"model '{self.name}': explainer.algorithm '{algorithm}' needs the model itself; the shap "
                             "format explains a predictor over the network with kernel or permutation")
        self.algorithm = "kernel" if algorithm == "auto" else algorithm
        folder = package_folder(self.source)
        try:
            background = load_background(folder, self.settings.background, self.settings.max_background_rows,
                                         self.input_name, DEFAULT_FILES)
        except BackgroundError as exc:
            raise ValueError(f"model '{self.name}': {exc}") from None
        if background is None:
            raise ValueError(f"model '{self.name}': the shap format needs a background sample: put one of "
                             f"{', '.join(DEFAULT_FILES)} in {folder}, or name it in shipyard.yaml "
                             "(explainer.background)")
        self.background = background
        width = background.width
        names = declared_columns(self.source) or background.feature_names
        self.feature_names = names if names and len(names) == width else [f"x{i}" for i in range(width)]
        self.inputs = [TensorSpec(self.input_name, "FP64", (-1, width))]

    def check(self, inputs: Tensors) -> Tensors:
        """Predicts pass through to the predictor, which checks them; a lone tensor takes the input's name."""
        if len(inputs) == 1 and self.input_name not in inputs:
            return {self.input_name: next(iter(inputs.values()))}
        return inputs

    async def run(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        sent = {key: value for key, value in parameters.items() if key != HEADERS_PARAMETER}
        answer = await self.upstream.infer(inputs, sent, parameters.get(HEADERS_PARAMETER))
        missing = [name for name in outputs if name not in answer]
        if missing:
            raise InvalidInput(f"the predictor of '{self.name}' has no output '{missing[0]}'; "
                               f"it returned: {', '.join(answer)}")
        return {name: answer[name] for name in outputs} if outputs else answer

    async def explain(self, inputs: Tensors, parameters: dict[str, Any]) -> Any:
        return await self.run_sync(self._explain, inputs, parameters)

    # -- in the model's thread ---------------------------------------------------------------
    def _explain(self, inputs: Tensors, parameters: dict[str, Any]) -> dict[str, Any]:
        assert self.background is not None
        rows = self._rows(inputs)
        with self._lock:  # the explainer keeps per-call state, and the headers are this call's
            self._call_headers = parameters.get(HEADERS_PARAMETER)
            if self._explainer is None:
                self._explainer = algorithms.model_agnostic(self.algorithm, self._predict, self.background.data,
                                                            self.settings.nsamples)
            attributions = self._explainer.attribute(rows)
            predictions = self._predict(rows)
        return explanation(self.name, self.algorithm, "prediction", self.feature_names, attributions, predictions,
                           self._output_name)

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        """The predictor's explained output for ``rows`` (the explainer's model function)."""
        outputs = self.upstream.infer_sync({self.input_name: rows}, self.settings.parameters or None,
                                           self._call_headers)
        wanted = self.settings.output
        if wanted is not None and wanted not in outputs:
            raise NoExplainer(f"model '{self.name}': explainer.output = '{wanted}': the predictor returned "
                              f"{', '.join(outputs)}")
        name = wanted or (DEFAULT_OUTPUT if DEFAULT_OUTPUT in outputs else next(iter(outputs)))
        self._output_name = name
        value = np.asarray(outputs[name])
        if value.dtype.kind not in "biuf":
            raise NoExplainer(f"model '{self.name}': the predictor's output '{name}' holds labels, not numbers; set "
                              "explainer.output to a numeric output, and explainer.parameters to ask for it "
                              "(e.g. predict_proba: true)")
        value = value.astype(np.float64)
        return value.reshape(len(rows), -1) if value.ndim > 2 else value

    def _rows(self, inputs: Tensors) -> np.ndarray:
        assert self.background is not None
        array = inputs.get(self.input_name)
        if array is None or array.ndim != 2 or array.dtype.kind not in "biuf":
            got = "nothing" if array is None else f"{array.dtype} with shape {list(array.shape)}"
            raise InvalidInput(f"input '{self.input_name}': explanations take numeric rows × features, got {got}")
        if array.shape[1] != self.background.width:
            raise InvalidInput(f"input '{self.input_name}': expected {self.background.width} features per row "
                               f"(as the background sample), got {array.shape[1]}")
        if not len(array):
            raise InvalidInput(f"input '{self.input_name}': no rows to explain")
        return array.astype(np.float64, copy=False)
