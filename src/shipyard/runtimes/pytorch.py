"""PyTorch runtime: TorchScript files, ``torch.export`` programs (``.pt2``), and eager modules in a model.py.

- TorchScript (``torch.jit.save``): the file does not record its signature, so it comes from the
  package config keys ``inputs:``/``outputs:`` (lists of ``{name, datatype, shape}``). Without
  ``inputs:`` the model takes one FP32 tensor ``input-0`` of any shape. Without ``outputs:`` they
  are learnt by running the model on zeros of the declared input shapes, when there are some.
- ``torch.export`` programs: names, datatypes and shapes (symbolic dims as -1) come from the program.
- A folder with ``model.py`` and ``format: pytorch``: served like a custom model, in inference mode.

Inputs are passed positionally in signature order; a tuple, list or dict result becomes several
outputs (``output-0``, ``output-1``, ... or the dict's keys). Everything runs under
``torch.inference_mode()``. The package config key ``threads`` sets ``torch.set_num_threads``,
which is process-wide.
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import types
import zipfile
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, datatype_of
from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes.base import ModelSource, TensorSpec, Tensors
from shipyard.runtimes.custom import CustomModel
from shipyard.runtimes.signature import check_request, declared_specs, thread_count

log = logging.getLogger("shipyard.runtimes.pytorch")

INPUT_NAME = "input-0"
#: Datatypes a TorchScript or exported program cannot take from a request.
UNSUPPORTED_INPUTS = {"BYTES": "text", "BF16": "bfloat16"}
USER_METHODS = ("preprocess", "predict", "postprocess")
#: Variable dimensions are set to these sizes when probing a model's outputs; dims that differ are -1.
PROBE_SIZES = (2, 3)


def import_torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise RuntimeError("serving PyTorch models needs torch: pip install 'shipyard[pytorch]'") from None
    return torch


def archive_kind(path: Path) -> str:
    """``torchscript`` or ``export``, told from the archive's entries; ValueError for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path} is not a TorchScript or torch.export archive ({exc})") from None
    if any(name.split("/")[-1] == "archive_format" for name in names):
        return "export"
    if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") for name in names):
        raise ValueError(
            f"{path} was written by torch.save (a state_dict or pickled module), which holds no code to run; "
            "save it with torch.jit.script(model).save(path) or torch.export.save(torch.export.export(model, "
            "example_inputs), 'model.pt2'), or serve a folder with a model.py that builds the module"
        )
    raise ValueError(f"{path} is a zip file but not a TorchScript or torch.export archive")


def flatten_outputs(result: Any) -> list[tuple[str, Any]]:
    """Name a model's result: a dict's keys, else ``output-0``, ``output-1``... over nested tuples/lists."""
    if isinstance(result, dict):
        return [(str(key), value) for key, value in result.items()]
    leaves: list[Any] = []

    def collect(value: Any) -> None:
        if isinstance(value, (tuple, list)):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        else:
            leaves.append(value)

    collect(result)
    return [(f"output-{index}", leaf) for index, leaf in enumerate(leaves)]


def to_tensor(torch: Any, array: np.ndarray) -> Any:
    """A tensor sharing the array's memory (copied only if it is read-only or not C-contiguous)."""
    if not array.flags.writeable:
        array = array.copy()
    elif not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def to_array(torch: Any, name: str, value: Any) -> np.ndarray:
    """A numpy view of an output tensor (bfloat16 becomes float32, which numpy has)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    if value is None or isinstance(value, str):
        raise TypeError(f"output '{name}' is {type(value).__name__}, not a tensor")
    return np.asarray(value)


def _datatype(torch: Any, dtype: Any, output: bool) -> str | None:
    """The V2 datatype of a torch dtype (bfloat16 outputs are sent as FP32); None if not servable."""
    if dtype == torch.bfloat16:
        return "FP32" if output else None
    try:
        return datatype_of(torch.empty((), dtype=dtype).numpy().dtype)
    except (TypeError, ValueError, RuntimeError):
        return None


def _spec_of_value(torch: Any, name: str, value: Any, output: bool) -> TensorSpec | None:
    """A TensorSpec from a graph node's fake tensor; symbolic dims become -1."""
    if not isinstance(value, torch.Tensor):
        return None
    datatype = _datatype(torch, value.dtype, output)
    if datatype is None:
        return None
    return TensorSpec(name, datatype, tuple(dim if isinstance(dim, int) else -1 for dim in value.shape))


def _numpy_result(torch: Any, result: Any) -> Any:
    """Turn the tensors of a user model's final result (a tensor or a dict of them) into arrays."""
    if isinstance(result, torch.Tensor):
        return to_array(torch, "output-0", result)
    if isinstance(result, dict):
        return {key: to_array(torch, str(key), value) if isinstance(value, torch.Tensor) else value
                for key, value in result.items()}
    return result


def _in_inference_mode(torch: Any, method: Callable[..., Any], final: bool) -> Callable[..., Any]:
    """Wrap a user method to run under ``torch.inference_mode()``, keeping its signature.

    The ``final`` method's tensors are made numpy arrays (bfloat16 too) for the response.
    """
    finish = functools.partial(_numpy_result, torch) if final else (lambda result: result)
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def run_async(*args: Any) -> Any:
            return finish(await _stepped(torch, method(*args)))

        return run_async

    @functools.wraps(method)
    def run(*args: Any) -> Any:
        with torch.inference_mode():
            return finish(method(*args))

    return run


@types.coroutine
def _stepped(torch: Any, coroutine: Any) -> Generator[Any, Any, Any]:
    """Drive ``coroutine`` with inference mode on during each of its steps only.

    Inference mode is thread-local state; holding it across an ``await`` would leak it into
    whatever else the event loop runs meanwhile.
    """
    advance, value = coroutine.send, None
    while True:
        try:
            with torch.inference_mode():
                yielded = advance(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, advance = (yield yielded), coroutine.send
        except BaseException as exc:  # cancellation and errors go into the coroutine
            value, advance = exc, coroutine.throw


class PyTorchModel(CustomModel):
    """Serves TorchScript, ``torch.export`` and eager (model.py) PyTorch models on the CPU."""

    format = "pytorch"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.kind = ""  # "torchscript", "export" or "eager"
        self.module: Any = None
        self._torch: Any = None
        self._in_spec: Any = None  # how an exported program takes its inputs (args, kwargs)
        #: Declared output names for a result that is a tuple/list or a single tensor, in order.
        self._output_names: list[str] | None = None
        #: False when the outputs are neither declared nor learnt: any name may be asked for.
        self._outputs_known = True
        #: Inputs whose rank nobody declared: any shape is accepted.
        self._any_shape: frozenset[str] = frozenset()

    def load(self) -> None:
        torch = self._torch = import_torch()
        threads = thread_count(self.source)
        if threads is not None:
            torch.set_num_threads(threads)
        path = self.source.path
        if path.is_dir() or path.suffix == ".py":
            self.kind = "eager"
            super().load()
            methods = [name for name in USER_METHODS if callable(getattr(self.instance, name, None))]
            for name in methods:
                wrapped = _in_inference_mode(torch, getattr(self.instance, name), final=name == methods[-1])
                setattr(self.instance, name, wrapped)
            return
        self.kind = archive_kind(path)
        if self.kind == "export":
            self._load_export(torch, path)
        else:
            self._load_torchscript(torch, path)

    def _load_torchscript(self, torch: Any, path: Path) -> None:
        try:
            self.module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ValueError(f"cannot load {path} as TorchScript: {_first_line(exc)}") from None
        self.module.eval()
        inputs = declared_specs(self.source, "inputs")
        outputs = declared_specs(self.source, "outputs")
        if inputs is None:
            inputs = [TensorSpec(INPUT_NAME, "FP32", (-1,))]
            self._any_shape = frozenset({INPUT_NAME})
        for spec in inputs:
            if spec.datatype in UNSUPPORTED_INPUTS:
                raise ValueError(
                    f"model '{self.name}': shipyard.yaml declares input '{spec.name}' as {spec.datatype}, but a "
                    f"TorchScript file cannot take {UNSUPPORTED_INPUTS[spec.datatype]} tensors from a request "
                    "(serve the model from a model.py to convert them yourself)"
                )
        self.inputs = inputs
        if outputs is not None:
            self._output_names = [spec.name for spec in outputs]
        elif not self._any_shape:
            outputs = self._probe(torch)
        if outputs is None:
            self._outputs_known = False
            outputs = [TensorSpec("output-0", "FP32", (-1,))]
        self.outputs = outputs
        self.default_outputs = [spec.name for spec in outputs] if self._outputs_known else []

    def _probe(self, torch: Any) -> list[TensorSpec] | None:
        """Learn the outputs by running the model on zeros; None (with a warning) if that fails."""
        runs: list[list[tuple[str, np.ndarray]]] = []
        try:
            for size in PROBE_SIZES:
                shapes = [[size if dim == -1 else dim for dim in spec.shape] for spec in self.inputs]
                zeros = [
                    to_tensor(torch, np.zeros(shape, DATATYPE_TO_DTYPE[spec.datatype]))
                    for shape, spec in zip(shapes, self.inputs)
                ]
                with torch.inference_mode():
                    result = self.module(*zeros)
                runs.append([(name, to_array(torch, name, value)) for name, value in flatten_outputs(result)])
            specs = []
            for (name, first), (_, second) in zip(*runs, strict=True):
                if first.ndim != second.ndim:
                    raise ValueError(f"output '{name}' changes rank with the batch size")
                shape = tuple(a if a == b else -1 for a, b in zip(first.shape, second.shape))
                specs.append(TensorSpec(name, datatype_of(first.dtype), shape))
        except Exception as exc:
            log.warning("%s: could not learn the outputs by running the model on zeros (%s); declare them under "
                        "'outputs' in shipyard.yaml", self.source.path, _first_line(exc))
            return None
        return specs

    def _load_export(self, torch: Any, path: Path) -> None:
        from torch.utils import _pytree as pytree

        try:
            # torch.export.load wants a name ending in .pt2, or a buffer
            program = torch.export.load(str(path) if path.suffix == ".pt2" else io.BytesIO(path.read_bytes()))
        except Exception as exc:
            raise ValueError(f"cannot load {path} as a torch.export program: {_first_line(exc)}") from None
        nodes = {node.name: node for node in program.graph.nodes}
        self.inputs = []
        for name in program.graph_signature.user_inputs:
            value = nodes[name].meta.get("val")
            spec = _spec_of_value(torch, name, value, output=False)
            if spec is None:
                raise ValueError(
                    f"{path}: input '{name}' is {getattr(value, 'dtype', type(value).__name__)}; Shipyard passes "
                    "tensors of bool, integer, float16, float32 or float64 to exported programs"
                )
            self.inputs.append(spec)
        out_spec = program.call_spec.out_spec
        positions = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
        returned = program.graph_signature.user_outputs
        self.outputs = []
        for name, index in flatten_outputs(positions):
            node = nodes.get(returned[index]) if index < len(returned) else None
            spec = _spec_of_value(torch, name, node.meta.get("val") if node is not None else None, output=True)
            self.outputs.append(spec or TensorSpec(name, "FP32", (-1,)))
        self.default_outputs = [spec.name for spec in self.outputs]
        self._in_spec = program.call_spec.in_spec
        self.module = program.module()

    def select_outputs(self, requested: list[str] | None, parameters: dict[str, Any]) -> list[str]:
        if not self._outputs_known:
            return list(requested or [])  # [] means every output the model returns
        return super().select_outputs(requested, parameters)

    def check(self, inputs: Tensors) -> Tensors:
        if self.kind == "eager":
            return super().check(inputs)
        return check_request(self.name, self.inputs, inputs, self._any_shape)

    async def run(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        if self.kind == "eager":
            return await super().run(inputs, outputs, parameters)
        return await self.run_sync(self.predict, inputs, outputs, parameters)

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        """Run the module on the inputs in signature order; return the requested (or all) outputs."""
        torch = self._torch
        tensors = [to_tensor(torch, inputs[spec.name]) for spec in self.inputs]
        try:
            with torch.inference_mode():
                if self._in_spec is not None:
                    from torch.utils import _pytree as pytree

                    args, kwargs = pytree.tree_unflatten(tensors, self._in_spec)
                    result = self.module(*args, **kwargs)
                else:
                    result = self.module(*tensors)
        except Exception as exc:
            error = self._explain(exc)
            if error is None:
                raise
            raise error from exc
        produced = dict(self._name_outputs(result))
        wanted = outputs or list(produced)
        missing = [name for name in wanted if name not in produced]
        if missing:
            error = ModelFailed if self._outputs_known else InvalidInput
            raise error(f"model '{self.name}' produced no output '{missing[0]}'; it returned: {', '.join(produced)}")
        return {name: to_array(torch, name, produced[name]) for name in wanted}

    def _explain(self, exc: Exception) -> Exception | None:
        """A shorter, truer error for a failed forward: broken shape guards are the request's fault."""
        message = str(exc).strip()
        if self.kind == "export" and ("Guard failed" in message or message.startswith("Expected input at")):
            return InvalidInput(f"model '{self.name}' rejected the inputs: {message}")
        if message.startswith("The following operation failed in the TorchScript interpreter"):
            return ModelFailed(f"model '{self.name}' raised {message.splitlines()[-1].strip()}")
        return None

    def _name_outputs(self, result: Any) -> list[tuple[str, Any]]:
        named = flatten_outputs(result)
        if self._output_names is None or isinstance(result, dict):
            return named
        if len(named) != len(self._output_names):
            raise ModelFailed(
                f"model '{self.name}' returned {len(named)} output(s), but shipyard.yaml declares "
                f"{len(self._output_names)}: {', '.join(self._output_names)}"
            )
        return [(name, value) for name, (_, value) in zip(self._output_names, named)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
