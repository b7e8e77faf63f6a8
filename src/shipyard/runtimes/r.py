"""R runtime: a model saved with ``saveRDS()``, served by a long-lived ``Rscript`` worker process.

``load()`` starts one worker per model (``r_worker.R``) and ``unload()`` stops it; requests reach
it one at a time over the binary protocol in :mod:`shipyard.runtimes.r_protocol`. The worker calls
``predict(model, newdata = data.frame(...))`` with the columns named by the model's terms (``lm``,
``glm``, ``rpart``, ...) or by the package's ``columns`` key. The input is ``input-0``: FP64
``[-1, n]`` when every column is numeric, else BYTES ``[-1, n]`` (text for factor columns; numeric
columns may be sent as numbers or as text). Numeric predictions come back as FP64, factor and
character ones as BYTES; a list of predictions (e.g. ``MASS::lda``) becomes one output per element.
A worker that died is replaced by the next request.

Package config keys: ``columns`` (input column names), ``type`` (passed to ``predict``, e.g.
``response`` for a glm) and ``packages`` (R packages to attach before reading the model).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import ModelSource, TensorSpec, Tensors, empty_like_spec, spec_of
from shipyard.runtimes.r_protocol import (
    Description,
    ProtocolError,
    ReplyReader,
    RError,
    WorkerGone,
    load_request,
    predict_request,
)
from shipyard.runtimes.signature import package_config
from shipyard.runtimes.worker_process import ProcessModel, WorkerProcess

INPUT_NAME = "input-0"
WORKER_SCRIPT = Path(__file__).with_name("r_worker.R")
#: R column classes (``attr(terms(m), "dataClasses")``) that travel as numbers.
NUMERIC_CLASSES = frozenset({"numeric", "integer", "logical"})
#: Like --vanilla, but reading .Renviron (R_LIBS_USER may point at the user's packages); profiles
#: are skipped because what they print would reach stdout before the worker diverts it.
R_OPTIONS = ("--no-save", "--no-restore", "--no-site-file", "--no-init-file")

log = logging.getLogger("shipyard.runtimes.r")

__all__ = ["RError", "RModel", "RWorker", "RWorkerFailed", "find_rscript"]


class RWorkerFailed(RuntimeError):
    """The worker process died or broke the protocol while answering."""


def find_rscript() -> str:
    """The path of ``Rscript``, or a RuntimeError saying how to install R."""
    path = shutil.which("Rscript")
    if path is None:
        raise RuntimeError(
            "serving R models needs Rscript, which is not on PATH; install R "
            "(Debian/Ubuntu: apt-get install r-base-core)"
        )
    return path


class RWorker(WorkerProcess):
    """One ``Rscript r_worker.R`` process speaking :mod:`shipyard.runtimes.r_protocol`."""

    def __init__(self, label: str) -> None:
        super().__init__(label, "R worker", log, "R said")

    def start(self) -> None:
        """Start the process (see :class:`WorkerProcess` for its session and stderr)."""
        self.launch([find_rscript(), *R_OPTIONS, str(WORKER_SCRIPT), self.label])

    def exchange(self, request: bytes) -> ReplyReader:
        """Send one request; return a reader positioned after a successful reply's status."""
        if self.process is None or self.process.stdin is None or self.process.stdout is None:
            raise WorkerGone("the worker is not running")
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerGone(f"could not send the request: {exc}") from None
        reader = ReplyReader(self.process.stdout)
        reader.status()
        return reader


def _string_key(config: dict[str, Any], key: str, name: str) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        raise ValueError(f"model '{name}': shipyard.yaml key '{key}' must be a non-empty string, got {value!r}")
    return value


def _string_list(config: dict[str, Any], key: str, name: str) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"model '{name}': shipyard.yaml key '{key}' must be a list of names, got {value!r}")
    return value


def _number(value: Any, column: str, row: int) -> float:
    if isinstance(value, (bytes, str)):
        text = (value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value).strip()
        flag = text.lower()
        if flag in ("true", "false"):
            return 1.0 if flag == "true" else 0.0
        value = text
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"input '{INPUT_NAME}': column '{column}' takes numbers, got {value!r} in row {row}"
        ) from None


def _text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"TRUE" if value else b"FALSE"
    return ("" if value is None else str(value)).encode("utf-8")


class RModel(ProcessModel):
    """Serves an ``.rds`` model through its own R worker process, one request at a time."""

    format = "r"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source, RWorker(source.name))
        self.columns: list[str] = []
        self.classes: list[str] = []
        self.model_class = ""
        self._type = ""
        self._packages: list[str] = []
        self._declared_columns: list[str] = []


    def load(self) -> None:
        config = package_config(self.source)
        self._type = _string_key(config, "type", self.name)
        self._packages = _string_list(config, "packages", self.name)
        self._declared_columns = _string_list(config, "columns", self.name)
        find_rscript()
        if not self.source.path.is_file():
            raise ValueError(f"{self.source.path} is not a file; expected an R model saved with saveRDS() (.rds)")
        with self._lock:
            self._unloaded = False
            description = self._start()
        self._describe(description)

    def _start(self) -> Description:
        """Start a worker and have it read the model; the caller holds the lock."""
        path = self.source.path
        self._worker.start()
        request = load_request(str(path), self._type, self._packages, self._declared_columns)
        try:
            return Description.read(self._worker.exchange(request))
        except RError as exc:
            self._worker.stop()
            raise ValueError(f"R could not serve {path}: {exc}") from None
        except (WorkerGone, ProtocolError) as exc:
            self._worker.kill()
            report = self._worker.exit_report()
            raise RWorkerFailed(f"the R worker failed while reading {path} ({exc}; {report})") from None

    def _describe(self, description: Description) -> None:
        self.columns, self.classes = description.columns, description.classes
        self.model_class = description.model_class
        numeric = all(cls in NUMERIC_CLASSES for cls in self.classes)
        self.inputs = [TensorSpec(INPUT_NAME, "FP64" if numeric else "BYTES", (-1, len(self.columns)))]
        self.outputs = [spec_of(name, array) for name, array in description.probe.items()]
        self.default_outputs = [spec.name for spec in self.outputs]
        described = ", ".join(f"{c} ({k})" for c, k in zip(self.columns, self.classes))
        log.info("model '%s': R %s, worker pid %s; input '%s' columns: %s",
                 self.name, self.model_class, self.worker_pid, INPUT_NAME, described or "none")
        if description.probe_error:
            log.info("model '%s': outputs unknown until the first request (probe failed: %s)",
                     self.name, description.probe_error)

    def _columns_of(self, table: np.ndarray) -> list[np.ndarray | list[bytes]]:
        """The request's columns as the worker takes them: float64 arrays or lists of UTF-8 text."""
        if table.dtype != object:
            return [np.asarray(table[:, j], dtype=np.float64) for j in range(table.shape[1])]
        columns: list[np.ndarray | list[bytes]] = []
        for j, (column, cls) in enumerate(zip(self.columns, self.classes)):
            values = table[:, j].tolist()
            if cls in NUMERIC_CLASSES:
                columns.append(np.array([_number(v, column, i) for i, v in enumerate(values)], dtype=np.float64))
            else:
                columns.append([_text(v) for v in values])
        return columns

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        table = inputs[INPUT_NAME]
        if not table.shape[0] and self.outputs:  # some predict() methods fail on zero rows
            return {spec.name: empty_like_spec(spec) for spec in self.outputs if not outputs or spec.name in outputs}
        request = predict_request(self._columns_of(table), table.shape[0])
        with self._lock:
            if self._unloaded:
                raise RWorkerFailed(f"model '{self.name}' is unloaded; its R worker is stopped")
            self._ensure_worker()
            try:
                result = self._worker.exchange(request).outputs()
            except (WorkerGone, ProtocolError) as exc:
                self._worker.kill()
                raise RWorkerFailed(
                    f"the R worker of model '{self.name}' failed while predicting ({exc}; "
                    f"{self._worker.exit_report()}); the next request starts a new one"
                ) from None
        if not outputs:
            return result
        missing = [name for name in outputs if name not in result]
        if missing:
            raise RWorkerFailed(f"R's predict() gave no output '{missing[0]}'; it gave: {', '.join(result)}")
        return {name: result[name] for name in outputs}


