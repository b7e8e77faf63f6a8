"""Models that run in their own virtual environment: a worker process behind the same server.

A package whose requirements the server's environment does not meet (``shipyard.package.environment``
decides, and builds the environment) gets an :class:`IsolatedModel`. Its ``load()`` starts
``<env python> -m shipyard.runtimes.isolated_worker``, which loads the model with its ordinary
runtime, so every format works isolated; requests cross stdin/stdout in the framing of
:mod:`shipyard.runtimes.tensor_pipe`, one at a time. Input checks whose rules the runtime class
does not override run here, before batching; the rest run in the worker. A worker that died is
reported (exit code, last stderr lines) and replaced by the next request.

Predicts never run on the event loop (``inline_when_fast`` stays false): a worker that hangs or
dies must not stall the server's health checks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shipyard.protocol.errors import InferenceError, ModelFailed
from shipyard.runtimes import tensor_pipe
from shipyard.runtimes.base import Model, ModelSource, TensorSpec, Tensors
from shipyard.runtimes.registry import runtime_class
from shipyard.runtimes.worker_process import ProcessModel, WorkerProcess

WORKER_MODULE = "shipyard.runtimes.isolated_worker"
#: Source options that are objects of this process, not data the worker could use.
LOCAL_OPTIONS = frozenset({"package", "package_dir", "isolation", "input_checks", "prepare"})
#: Variables that would put the server's libraries (or its startup code) into the worker.
HIDDEN_VARIABLES = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE"})

log = logging.getLogger("shipyard.runtimes.isolated")


@dataclass(frozen=True)
class Isolation:
    """Why a package's model runs in its own environment, and how to get that environment."""

    #: Shown in the log, e.g. "requires six==1.15.0, the server has 1.17.0".
    reason: str
    #: Builds the environment, or finds it in the cache, and returns its python.
    environment: Callable[[], Path]
    #: Set in the worker's environment (the package's ``environment_variables``).
    variables: dict[str, str] = field(default_factory=dict)
    #: The worker's working directory (the package folder).
    workdir: Path | None = None


class IsolatedModelError(RuntimeError):
    """The model could not be started in its environment."""


def portable_options(options: dict[str, Any]) -> dict[str, Any]:
    """The source options the worker gets: JSON data only (the raw config, secrets' values, flags)."""
    kept: dict[str, Any] = {}
    for key, value in options.items():
        if key in LOCAL_OPTIONS:
            continue
        if key == "secrets" and isinstance(value, Mapping):
            value = dict(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            if key != "config":
                log.debug("option '%s' (%s) stays in the server; the worker cannot use it", key, type(value).__name__)
                continue
            value = json.loads(json.dumps(value, default=str))  # YAML dates and the like become text
        kept[key] = value
    return kept


def _specs(described: list[dict[str, Any]]) -> list[TensorSpec]:
    return [TensorSpec(item["name"], item["datatype"], tuple(item["shape"])) for item in described]


class IsolatedModel(ProcessModel):
    """Serves a model through a worker process in the package's own virtual environment."""

    #: The package's environment variables go to the worker, not to this process.
    in_process = False

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source, WorkerProcess(source.name, "isolated worker", log, "it said"))
        isolation = source.options.get("isolation")
        if not isinstance(isolation, Isolation):
            raise TypeError(
                f"model '{source.name}': source.options['isolation'] must be an Isolation, got {isolation!r}"
            )
        self.isolation = isolation
        runtime = runtime_class(source.format)  # runtime modules import only numpy until a model loads
        self.format = runtime.format  # type: ignore[misc]
        self.batchable = runtime.batchable  # type: ignore[misc]
        self._checks_here = runtime.check is Model.check
        self._selects_here = runtime.select_outputs is Model.select_outputs
        self._platform = runtime.format
        #: The environment's python, once loaded.
        self.python: Path | None = None

    @property
    def platform(self) -> str:
        return self._platform


    def load(self) -> None:
        log.info("model '%s' runs in its own environment: %s", self.name, self.isolation.reason)
        if int(self.source.options.get("concurrency", 1)) > 1:
            log.info("model '%s': its worker runs one request at a time ('concurrency' applies in-process only)",
                     self.name)
        self.python = self.isolation.environment()
        with self._lock:
            self._unloaded = False
            reply = self._start()
        self.inputs = _specs(reply["inputs"])
        self.outputs = _specs(reply["outputs"])
        self.default_outputs = list(reply["default_outputs"])
        self._platform = str(reply.get("platform") or self._platform)
        log.info("model '%s': worker pid %s, Python %s, environment %s",
                 self.name, self.worker_pid, reply.get("python"), self.python.parent.parent)

    def _environment(self) -> dict[str, str]:
        assert self.python is not None
        env = {key: value for key, value in os.environ.items() if key not in HIDDEN_VARIABLES}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"  # `python`, `pip` in model code
        env["VIRTUAL_ENV"] = str(self.python.parent.parent)
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONSAFEPATH"] = "1"  # Python >= 3.11: no working directory on sys.path
        env.update(self.isolation.variables)
        return env

    def _start(self) -> dict[str, Any]:
        """Start a worker and have it load the model; the caller holds the lock."""
        assert self.python is not None
        self._worker.launch([str(self.python), "-m", WORKER_MODULE], self._environment(), self.isolation.workdir)
        source = self.source
        request = {"op": "load", "source": {
            "name": source.name, "format": source.format, "path": str(source.path), "version": source.version,
            "options": portable_options(source.options),
        }}
        try:
            reply, _ = self._exchange(request)
        except (tensor_pipe.PipeClosed, tensor_pipe.FramingError) as exc:
            self._worker.kill()
            raise IsolatedModelError(
                f"the worker of model '{self.name}' failed while loading it ({exc}; {self._worker.exit_report()})"
            ) from None
        if not reply.get("ok"):
            self._worker.stop()
            raise IsolatedModelError(
                f"model '{self.name}' failed to load in its environment {self.python.parent.parent}: "
                f"{reply.get('error')}"
            )
        return reply

    def _exchange(self, header: dict[str, Any], tensors: Tensors | None = None) -> tuple[dict[str, Any], Tensors]:
        stdin, stdout = self._worker.stdin, self._worker.stdout
        if stdin is None or stdout is None:
            raise tensor_pipe.PipeClosed("the worker is not running")
        parts = tensor_pipe.encode(header, tensors)
        try:
            tensor_pipe.send(stdin, parts)
        except OSError as exc:
            raise tensor_pipe.PipeClosed(f"could not send the request: {exc}") from None
        return tensor_pipe.read(stdout)

    def check(self, inputs: Tensors) -> Tensors:
        # A runtime with its own rules (ONNX, PyTorch: inputs of any shape) checks in the worker.
        return super().check(inputs) if self._checks_here else inputs

    def select_outputs(self, requested: list[str] | None, parameters: dict[str, Any]) -> list[str]:
        # A runtime with its own rules (estimators' predict_proba parameter) selects in the worker.
        return super().select_outputs(requested, parameters) if self._selects_here else list(requested or [])

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        with self._lock:
            if self._unloaded:
                raise ModelFailed(f"model '{self.name}' is unloaded; its worker is stopped")
            self._ensure_worker()
            try:
                reply, result = self._exchange({"op": "predict", "outputs": outputs, "parameters": parameters}, inputs)
            except (tensor_pipe.PipeClosed, tensor_pipe.FramingError) as exc:
                self._worker.kill()
                raise ModelFailed(
                    f"the worker of model '{self.name}' failed while predicting ({exc}; "
                    f"{self._worker.exit_report()}); the next request starts a new one"
                ) from None
        if not reply.get("ok"):
            raise InferenceError.with_status(int(reply.get("status", 500)), str(reply.get("error")))
        return result


