"""The runtime interface every model format implements, and input checking shared by all."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from shipyard.protocol.datatypes import (
    DATATYPE_TO_DTYPE,
    FLOAT_DATATYPES,
    INTEGER_DATATYPES,
    NUMERIC_DATATYPES,
    datatype_of,
)
from shipyard.protocol.errors import InferenceError, InvalidInput, ModelFailed

Tensors = dict[str, np.ndarray]
#: The request parameter under which the server hands a transformer the request's passed headers
#: (``x-request-id``, ``authorization``, ``traceparent``, ``tracestate``).
HEADERS_PARAMETER = "headers"


class NoExplainer(InferenceError):
    """The model cannot explain its predictions (HTTP 501)."""

    status = 501


def no_explainer_message(model: str) -> str:
    return (f"model '{model}' has no explainer: add an `explainer:` section to shipyard.yaml "
            "or an explain() method to model.py")


@dataclass
class Execution:
    """How one request was executed: time spent queued, and the model execution it ran in."""

    #: Nanoseconds waiting for a batch slot or a free model thread.
    queue_ns: int = 0
    #: Rows in the model execution (batch) this request ran in; 0 when it ran alone.
    batch_rows: int = 0
    #: False for all but one request of a merged batch, so an execution is counted once.
    counted: bool = True


#: The current request's Execution record (mutable, so a batch task can fill it in).
EXECUTION: ContextVar[Execution] = ContextVar("shipyard_execution")


#: A runtime that allows it runs predict on the event loop itself while its predicts average under
#: this many nanoseconds. A thread hop costs more than a small predict, and handing the GIL back
#: and forth between the loop and a model thread can stall for the interpreter's 5 ms switch
#: interval; measured on XGBoost (200 trees) at 16 connections, 5 ms gave 1.5x the throughput of
#: 1 ms. Health checks wait at most this long behind a predict.
INLINE_BUDGET_NS = 5_000_000


def _timed(function: Any, *args: Any) -> tuple[int, int, Any]:
    started = time.perf_counter_ns()
    result = function(*args)
    return started, time.perf_counter_ns(), result


@dataclass(frozen=True)
class TensorSpec:
    """Name, V2 datatype and shape of one model input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def describe(self) -> str:
        return f"{self.datatype} with shape {list(self.shape)}"


class InputChecks(Protocol):
    """Checks a package declares around the runtime's own (see shipyard.package.checks)."""

    @property
    def specs(self) -> list[TensorSpec]: ...

    def before(self, tensors: Tensors, runtime_inputs: Sequence[TensorSpec]) -> Tensors: ...

    def after(self, checked: Tensors) -> Tensors: ...


@dataclass
class ModelSource:
    """Where a model comes from and how to serve it, before it is loaded."""

    name: str
    format: str
    path: Path
    version: str = "1"
    options: dict[str, Any] = field(default_factory=dict)


class Model:
    """A servable model. Subclasses implement :meth:`load` and :meth:`predict`.

    ``predict`` is synchronous and runs in the model's own thread pool, so a slow model never
    blocks the event loop that answers health checks. ``inputs``/``outputs`` describe the
    tensors, and ``default_outputs`` are returned when a request names none.
    """

    format: ClassVar[str] = ""
    #: How many predicts may run at once; most libraries are safe at 1 per model.
    max_concurrency: int = 1
    #: Whether rows of concurrent requests may be merged into one predict without asking:
    #: true for runtimes whose predict is row-independent (estimators, ONNX, torch.export).
    batchable: ClassVar[bool] = False
    #: Whether predict may run on the event loop when it is fast (built-in runtimes whose cost is
    #: bounded by the batch size); user code always runs in the thread pool.
    inline_when_fast: ClassVar[bool] = False
    #: Whether a model loaded in one process still works in processes forked from it (no thread
    #: pools created at load). Such models load once, before ``--workers`` fork, and share memory.
    fork_safe: ClassVar[bool] = False
    #: Whether the model runs in this process (package environment variables are then set here).
    in_process: ClassVar[bool] = True

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.name = source.name
        self.version = source.version
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.default_outputs: list[str] = []
        self._executor: ThreadPoolExecutor | None = None
        #: Moving average of predict time; None until the first predict.
        self.predict_ns: float | None = None
        #: The package's declared signature and data rules, enforced around :meth:`check`.
        self.input_checks: InputChecks | None = source.options.get("input_checks")

    @property
    def platform(self) -> str:
        return self.format

    def setup(self) -> None:
        """Prepare the model's package (weights, secrets, environment variables), then :meth:`load`."""
        prepare = self.source.options.get("prepare")
        if prepare is not None:
            self.source.options.update(prepare(in_process=self.in_process))
        self.load()

    def load(self) -> None:
        """Read the artifact and fill in ``inputs``, ``outputs`` and ``default_outputs``."""
        raise NotImplementedError

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        """Compute the named ``outputs`` for already-checked ``inputs``."""
        raise NotImplementedError

    def unload(self) -> None:
        """Release the model's resources."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"model-{self.name}")
        return self._executor

    def _observe(self, started: int, finished: int) -> None:
        spent = finished - started
        self.predict_ns = spent if self.predict_ns is None else 0.8 * self.predict_ns + 0.2 * spent

    def runs_inline(self) -> bool:
        """Whether the next predict runs on the event loop (fast built-in models only)."""
        return self.inline_when_fast and self.predict_ns is not None and self.predict_ns < INLINE_BUDGET_NS

    async def run_sync(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` (inline when fast, else in the model's thread pool); its crashes become
        ModelFailed."""
        try:
            if self.runs_inline():
                started, finished, result = _timed(function, *args)
            else:
                loop = asyncio.get_running_loop()
                submitted = time.perf_counter_ns()
                started, finished, result = await loop.run_in_executor(self.executor, _timed, function, *args)
                execution = EXECUTION.get(None)
                if execution is not None:
                    execution.queue_ns += started - submitted
        except InferenceError:
            raise
        except Exception as exc:  # the model's own code failed
            raise ModelFailed.from_exception(self.name, exc) from exc
        self._observe(started, finished)
        return result

    def check(self, inputs: Tensors) -> Tensors:
        """Match request tensors to the model's inputs (names, datatypes, shapes); raise InvalidInput."""
        return check_inputs(self.name, self.inputs, inputs)

    @property
    def signature_inputs(self) -> list[TensorSpec]:
        """The inputs clients see: the package's declared ones, else the runtime's."""
        return self.input_checks.specs if self.input_checks is not None else self.inputs

    def validate(self, inputs: Tensors) -> Tensors:
        """The package's declared checks (if any) around the runtime's own :meth:`check`."""
        checks = self.input_checks
        if checks is None:
            return self.check(inputs)
        return checks.after(self.check(checks.before(inputs, self.inputs)))

    async def run(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        """Predict already-checked inputs (the batcher calls this with merged batches)."""
        return await self.run_sync(self.predict, inputs, outputs, parameters)

    async def infer(self, inputs: Tensors, outputs: list[str] | None, parameters: dict[str, Any]) -> Tensors:
        """Check inputs and outputs against the model's signature, then predict."""
        return await self.run(self.validate(inputs), self.select_outputs(outputs, parameters), parameters)

    async def explain(self, inputs: Tensors, parameters: dict[str, Any]) -> Any:
        """Explain already-checked ``inputs``: a JSON-serialisable answer. By default the model has no
        explainer of its own (the server then tries the built-in SHAP explainers, shipyard.explain)."""
        raise NoExplainer(no_explainer_message(self.name))

    def select_outputs(self, requested: list[str] | None, parameters: dict[str, Any]) -> list[str]:
        """Validate requested output names; fall back to ``default_outputs``."""
        if not requested:
            return list(self.default_outputs)
        known = {spec.name for spec in self.outputs}
        for name in requested:
            if known and name not in known:
                raise InvalidInput(
                    f"unknown output '{name}' for model '{self.name}'; it has: {', '.join(sorted(known))}"
                )
        return list(requested)

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [spec.to_dict() for spec in self.signature_inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }


def check_inputs(model: str, specs: list[TensorSpec], tensors: Tensors) -> Tensors:
    """Match request tensors to the model's input specs: names, datatypes and shapes.

    A model with a single input accepts a single request tensor under any name, as KServe's
    built-in servers do. Numeric tensors are cast to the datatype the model declares.
    """
    if not specs:
        return tensors
    if len(specs) == 1 and len(tensors) == 1:
        tensors = {specs[0].name: next(iter(tensors.values()))}
    checked: Tensors = {}
    for spec in specs:
        if spec.name not in tensors:
            raise InvalidInput(f"missing input '{spec.name}' ({spec.describe()}) for model '{model}'")
        checked[spec.name] = check_tensor(spec, tensors[spec.name])
    extra = [name for name in tensors if name not in checked]
    if extra:
        expected = ", ".join(spec.name for spec in specs)
        raise InvalidInput(f"unknown input '{extra[0]}' for model '{model}'; it takes: {expected}")
    return checked


def check_tensor(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """Check one tensor's datatype (casting safely to the spec's) and shape; raise InvalidInput."""
    got = datatype_of(array.dtype)
    if got != spec.datatype:
        lossy = spec.datatype in INTEGER_DATATYPES and got in FLOAT_DATATYPES
        if spec.datatype in NUMERIC_DATATYPES and got in NUMERIC_DATATYPES and not lossy:
            target = DATATYPE_TO_DTYPE[spec.datatype]
            if spec.datatype in INTEGER_DATATYPES and array.size and not np.can_cast(array.dtype, target):
                info = np.iinfo(target)
                if array.min() < info.min or array.max() > info.max:
                    raise InvalidInput(f"input '{spec.name}': values do not fit {spec.datatype} [{info.min}, {info.max}]")
            array = array.astype(target, copy=False)
        else:
            raise InvalidInput(f"input '{spec.name}': expected {spec.datatype}, got {got}{_kind_hint(got)}")
    shape = array.shape
    matches = len(shape) == len(spec.shape) and all(
        want in (-1, have) for want, have in zip(spec.shape, shape)
    )
    if not matches:
        hint = ""
        if len(shape) == 1 and len(spec.shape) == 2 and spec.shape[1] in (-1, shape[0]):
            hint = f"; for one row send shape [1, {shape[0]}]"
        raise InvalidInput(f"input '{spec.name}': expected shape {list(spec.shape)}, got {list(shape)}{hint}")
    return array


def _kind_hint(datatype: str) -> str:
    if datatype == "BYTES":
        return " (strings or other non-numeric values)"
    if datatype in FLOAT_DATATYPES:
        return " (fractional values would be truncated)"
    return ""


def spec_of(name: str, array: np.ndarray) -> TensorSpec:
    """Describe an example output array with a variable batch dimension."""
    return TensorSpec(name, datatype_of(array.dtype), (-1, *array.shape[1:]))


def empty_like_spec(spec: TensorSpec) -> np.ndarray:
    """A zero-row array with the spec's datatype and fixed dimensions."""
    return np.empty((0, *(max(dim, 0) for dim in spec.shape[1:])), dtype=DATATYPE_TO_DTYPE[spec.datatype])
