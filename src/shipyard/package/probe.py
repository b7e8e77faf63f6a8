"""What a package being written really serves: load it with its runtime, run a sample through it, and
write the signature and examples from what came out.

Shared by ``shipyard.package(obj, ...)`` and ``shipyard init``. Packages are written into a
staging folder next to the target and renamed into place only once complete (:func:`staging`).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from shipyard.package.config import CONFIG_FILE, EXAMPLES_FILE, PackageError
from shipyard.package.sample import Sample
from shipyard.package.source import model_source
from shipyard.protocol.datatypes import datatype_of
from shipyard.protocol.errors import InferenceError, InvalidInput
from shipyard.runtimes.base import Model, TensorSpec, Tensors, spec_of
from shipyard.runtimes.registry import create_model

#: Outputs agree with the object's own predictions within these (numpy.isclose) tolerances.
RTOL, ATOL = 1e-5, 1e-6


def check_target(directory: Path, overwrite: bool, flag: str = "overwrite=True") -> Path:
    """The absolute target folder; PackageError if it exists with content and ``overwrite`` is false."""
    target = Path(directory).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise PackageError(f"'{directory}' is a file; give a folder for the package")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise PackageError(f"'{directory}' already exists and is not empty; choose another folder, "
                           f"or pass {flag} to replace it")
    if not target.parent.is_dir():
        raise PackageError(f"cannot write '{directory}': its parent folder '{target.parent}' does not exist")
    return target


@contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` to write into; removed if the block fails."""
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def publish(folder: Path, target: Path) -> Path:
    """Move a complete staging folder to ``target``, replacing what was there only once the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    folder.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def yaml_text(data: Any) -> str:
    """``data`` as block YAML in the order given, with lists of scalars inline (``shape: [-1, 4]``)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)


def write_yaml(path: Path, data: Any, header: str = "") -> None:
    path.write_text(header + yaml_text(data))


@contextmanager
def loaded(folder: Path) -> Iterator[Model]:
    """The package in ``folder`` loaded by its real runtime, as ``shipyard serve`` would load it."""
    source, _ = model_source(folder)
    model = create_model(source)
    try:
        model.load()
    except PackageError:
        raise
    except Exception as exc:
        raise PackageError(f"the written package does not load with the {source.format} runtime: "
                           f"{type(exc).__name__}: {exc}") from exc
    try:
        yield model
    finally:
        model.unload()


def infer(model: Model, tensors: Tensors, outputs: list[str] | None = None) -> Tensors:
    """Check and predict ``tensors`` the way the server does (``Model.infer``); errors name the sample.

    Runs on a private event loop in another thread, so it works where a loop is already running
    (a Jupyter notebook).
    """
    with ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(asyncio.run, model.infer(tensors, outputs, {})).result()
        except InvalidInput as exc:
            raise PackageError(f"sample_input does not fit the model: {exc}") from None
        except InferenceError as exc:
            raise PackageError(f"the model failed on sample_input through the {model.format} runtime: {exc}") from None


def output_names(model: Model) -> list[str] | None:
    """Every output the model declares (None: whatever it returns)."""
    return [spec.name for spec in model.outputs] or None


def signature(model: Model, tensors: Tensors, results: Tensors, columns: list[str] | None) -> dict[str, Any]:
    """``inputs``/``outputs`` for shipyard.yaml: what the runtime reports, completed from the sample."""
    inputs = []
    for name, array in tensors.items():
        spec = next((spec for spec in model.inputs if spec.name == name), None)
        if spec is None or not spec.shape:  # undeclared, or of any shape: the sample tells
            spec = TensorSpec(name, datatype_of(array.dtype) if spec is None else spec.datatype,
                              (-1, *array.shape[1:]))
        inputs.append(tensor_config(spec))
    if columns and len(inputs) == 1 and len(inputs[0]["shape"]) == 2 and inputs[0]["shape"][1] in (-1, len(columns)):
        inputs[0]["shape"][1] = len(columns)
        inputs[0]["columns"] = list(columns)
    specs = model.outputs or [spec_of(name, np.asarray(value)) for name, value in results.items()]
    return {"inputs": inputs, "outputs": [tensor_config(spec) for spec in specs]}


def tensor_config(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def examples(model: Model, sample: Sample, count: int) -> list[dict[str, Any]]:
    """One example per row of the first ``count`` rows, with every output computed through the runtime
    (``shipyard test`` requests the outputs an example names, so ``predict_proba`` is checked too)."""
    found = []
    bound = sample.bind(model.inputs)
    for row in range(min(count, sample.rows)):
        tensors = {name: array[row:row + 1] for name, array in bound.items()}
        outputs = infer(model, tensors, output_names(model))
        found.append({
            "name": f"row-{row}",
            "inputs": {name: plain(array) for name, array in tensors.items()},
            "outputs": {name: plain(np.asarray(array)) for name, array in outputs.items()},
        })
    return found


def write_examples(folder: Path, found: list[dict[str, Any]], made_by: str) -> None:
    header = (f"# Requests and the outputs this package answers them with, computed through its runtime by {made_by}\n"
              "# from rows of the sample it was made with. `shipyard test .` sends each one and compares.\n")
    write_yaml(folder / EXAMPLES_FILE, found, header)


def plain(array: np.ndarray) -> Any:
    """A tensor as nested lists for YAML: text as strings, FP32/FP16 in their shortest exact form."""
    if array.dtype == object:
        decoded = [item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item
                   for item in array.ravel().tolist()]
        return np.array(decoded, dtype=object).reshape(array.shape).tolist()
    if array.dtype in (np.float32, np.float16):
        # str(np.float32(5.1)) is "5.1", which reads back as the same float32; tolist() gives 5.099999904632568
        shortest = [float(str(value)) for value in array.ravel()]
        return np.array(shortest, dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def compare(served: Tensors, expected: Tensors, what: str) -> None:
    """Raise PackageError when an output the runtime serves differs from what ``what`` gives."""
    for name, reference in expected.items():
        if name not in served:
            raise PackageError(f"the package serves no output '{name}', which {what} returns")
        got, want = _comparable(np.asarray(served[name])), _comparable(np.asarray(reference))
        if got.shape != want.shape:
            raise PackageError(f"the package would not serve what you trained: output '{name}' has shape "
                               f"{list(got.shape)} when served, {list(want.shape)} from {what}")
        if got.dtype.kind in "biuf" and want.dtype.kind in "biuf":
            close = np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            close = got == want
        if not np.all(close):
            index = tuple(int(i) for i in np.argwhere(~np.asarray(close))[0])
            raise PackageError(f"the package would not serve what you trained: output '{name}' at {list(index)} is "
                               f"{got[index]!r} when served, {want[index]!r} from {what}")


def _comparable(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "OSU":
        return np.array([item.decode("utf-8") if isinstance(item, bytes) else str(item)
                         for item in array.ravel().tolist()], dtype=object).reshape(array.shape)
    return array


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def write_config(folder: Path, config: dict[str, Any], header: str = "") -> None:
    """Write ``shipyard.yaml`` (keys in the order given)."""
    write_yaml(folder / CONFIG_FILE, config, header)
