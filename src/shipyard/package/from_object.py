"""``shipyard.package(obj, DIR, sample_input=...)``: a model package made from a trained object in memory.

The object's framework is told from its class (never by importing a framework that is not already
imported, so packaging a scikit-learn model does not import torch), and it is saved in the form
its runtime serves best:

==========================================  =========================================================
object                                      package
==========================================  =========================================================
scikit-learn estimator or Pipeline          ``model.joblib`` (``model.pkl`` by cloudpickle when it uses
                                            classes defined in ``__main__``)
XGBoost Booster, XGBClassifier/Regressor    ``model.ubj`` (the wrapper's kind is kept: labels and
                                            ``predict_proba``)
LightGBM Booster, LGBMRegressor             ``model.txt``
LGBMClassifier                              ``model.joblib`` (a text model loses labels and
                                            ``predict_proba``)
torch.nn.Module                             ``model.pt2`` (``torch.export`` with a variable batch
                                            dimension), else ``model.pt`` (TorchScript)
ONNX ModelProto                             ``model.onnx``
transformers Pipeline, SentenceTransformer  ``model/`` (``save_pretrained``) and ``task``
anything else with ``predict()``            ``model.py`` calling the object unpickled from
                                            ``data/model.pkl`` (cloudpickle)
==========================================  =========================================================

With ``sample_input``, the written package is loaded by its real runtime and the sample run
through it: the signature it serves goes into ``shipyard.yaml``, the first rows become
``examples.yaml`` with the outputs the runtime computed, and those outputs must equal the object's
own predictions (else PackageError: the package would not serve what was trained). Requirements
are pinned to the versions installed here. Everything is written to a staging folder and renamed
into place at the end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from shipyard.package.config import PackageError, check_name
from shipyard.package.pins import format_requirements, object_modules
from shipyard.package.probe import (check_target, compare, first_line, infer, loaded, output_names, publish,
                                    signature, staging, write_config, write_examples)
from shipyard.package.probe import examples as sample_examples
from shipyard.package.sample import Sample
from shipyard.protocol.datatypes import datatype_of
from shipyard.runtimes.base import Model, Tensors
from shipyard.runtimes.registry import normalise_format

SUPPORTED = (
    "a scikit-learn estimator or Pipeline, an XGBoost Booster / XGBClassifier / XGBRegressor, a LightGBM Booster / "
    "LGBMClassifier / LGBMRegressor, a torch.nn.Module (or TorchScript module, or torch.export program), an ONNX "
    "ModelProto, a transformers Pipeline or SentenceTransformer, or any other object with a predict() method"
)
#: Rows of the sample written to examples.yaml, and rows checked against the object's own predictions.
EXAMPLE_ROWS = 3
CHECK_ROWS = 32

PICKLED_MODEL = '''\
"""Serves a Python object that shipyard.package() pickled into data/model.pkl: its predict() answers requests.

The object's classes must be importable when the server loads this package. Classes defined in
__main__ (a notebook or a script) were pickled by value with cloudpickle; classes from your own
modules must be installed where the package is served (or sit next to this file).
"""

import pickle

import numpy as np

#: The sample was a pandas DataFrame with these columns: predict() gets one back (None: the array itself).
COLUMNS = {columns!r}


class Model:
    def __init__(self, config, data_dir):
        # The signature in shipyard.yaml; the server checks every request against it.
        self.inputs = config.get("inputs")
        self.outputs = config.get("outputs")
        self.data_dir = data_dir

    def load(self):
        with open(self.data_dir / "model.pkl", "rb") as handle:
            self.obj = pickle.load(handle)

    def predict(self, inputs):
        values = {{name: _as_python(array) for name, array in inputs.items()}}
        if len(values) > 1:
            return self.obj.predict(values)
        value = next(iter(values.values()))
        if COLUMNS is not None:
            import pandas

            value = pandas.DataFrame(value, columns=COLUMNS)
        return self.obj.predict(value)


def _as_python(array):
    """Text arrives as UTF-8 bytes; the object was given str."""
    if array.dtype == object:
        decoded = [item.decode("utf-8") if isinstance(item, bytes) else item for item in array.ravel().tolist()]
        return np.array(decoded, dtype=object).reshape(array.shape)
    return array
'''


class PackageWarning(UserWarning):
    """Something about the package the user should know (a module no distribution provides, a fallback taken)."""


def _warn(message: str) -> None:
    """Warn, pointing at the caller's line outside Shipyard (a notebook cell, a script)."""
    package_dir = str(Path(__file__).resolve().parent.parent)
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called _warn
    while frame is not None and frame.f_code.co_filename.startswith(package_dir):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PackageWarning, stacklevel=level)


@dataclass
class Artifact:
    """What a writer put in the staging folder."""

    #: The model file or folder, relative to the package; None for a folder served by its model.py.
    path: str | None
    #: Keys for shipyard.yaml besides name, version, format and artifact.
    config: dict[str, Any] = field(default_factory=dict)
    #: Modules the artifact needs besides its format's framework (those a pickle references).
    modules: set[str] = field(default_factory=set)
    #: The format to serve it with, when not the detected one (a pickled LightGBM wrapper stays lightgbm).
    format: str | None = None


def package(obj: Any, directory: str | Path, sample_input: Any = None, *, name: str | None = None,
            version: str = "1", examples: int | None = None, overwrite: bool = False,
            format: str | None = None) -> Path:
    """Write a model package for the trained ``obj`` into ``directory`` and return its path.

    ``sample_input``: a batch the model predicts on (numpy array, pandas DataFrame, list of rows,
    list of strings, torch tensor, dict of those per named input, tuple for positional inputs);
    it gives the signature and examples, and proves the package serves what ``obj`` predicts.
    A ``torch.nn.Module`` needs one. ``examples``: how many of its rows go to examples.yaml
    (default 3). ``format``: serve as another format than detected (``custom`` pickles any object
    with ``predict()``). ``overwrite``: replace an existing non-empty ``directory``.
    """
    target = check_target(Path(directory), overwrite)
    model_name = check_name(name or target.name, "shipyard.package(name=...)")
    fmt = choose_format(obj, format)
    count = _example_count(examples)
    sample = Sample.of(sample_input) if sample_input is not None else None
    if sample is not None and sample.columns is None:
        sample.columns = _feature_names(obj, sample)
    with staging(target) as folder:
        artifact = WRITERS[fmt](obj, folder, sample)
        config: dict[str, Any] = {"name": model_name, "version": str(version), "format": artifact.format or fmt}
        if artifact.path:
            config["artifact"] = artifact.path
        config.update(artifact.config)
        write_config(folder, config)
        if sample is not None:
            config.update(_probe(folder, sample, fmt))
        pins, unowned = format_requirements(config["format"], artifact.modules)
        if unowned:
            _warn(f"the model uses module(s) {', '.join(unowned)}, which no installed distribution provides; "
                  "they must be importable where the package is served")
        config["requirements"] = pins
        write_config(folder, config)
        if sample is not None:
            found = _verify(folder, obj, fmt, sample, count)
            if found:
                write_examples(folder, found, "shipyard.package")
        return publish(folder, target)


def _verify(folder: Path, obj: Any, fmt: str, sample: Sample, count: int) -> list[dict[str, Any]]:
    """Examples from the final package, once its outputs (batched and row by row) equal the object's own."""
    with loaded(folder) as model:
        check = sample.head(max(CHECK_ROWS, count))
        reference = reference_outputs(fmt, obj, model, check)
        what = f"the {type(obj).__name__} itself"
        compare(infer(model, check.bind(model.inputs), output_names(model)), reference, what)
        found = sample_examples(model, sample, count)
    for row, example in enumerate(found):
        served = {name: np.asarray(value) for name, value in example["outputs"].items()}
        compare(served, {name: np.asarray(value)[row:row + 1] for name, value in reference.items() if name in served},
                f"{what} (example {example['name']})")
    return found


def _probe(folder: Path, sample: Sample, fmt: str) -> dict[str, Any]:
    """The signature the staged package serves, learnt by running the sample through its runtime."""
    with loaded(folder) as model:
        tensors = sample.bind(model.inputs)
        try:
            results = infer(model, tensors, output_names(model))
        except PackageError as exc:
            text = any(array.dtype == object for array in sample.tensors)
            if text and fmt in ("sklearn", "xgboost", "lightgbm"):
                raise PackageError(f"{exc}; a model that takes text (such as a scikit-learn pipeline that vectorises "
                                   "it) is served as a custom model: pass format='custom'") from None
            raise
        return signature(model, tensors, results, sample.columns)


def _example_count(value: int | None) -> int:
    if value is None:
        return EXAMPLE_ROWS
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PackageError(f"examples: expected how many sample rows to write as examples (0 or more), got {value!r}")
    return value


def _feature_names(obj: Any, sample: Sample) -> list[str] | None:
    """A scikit-learn-style estimator's ``feature_names_in_``, when they match the sample's width."""
    names = getattr(obj, "feature_names_in_", None)
    if names is None or len(sample.tensors) != 1 or sample.tensors[0].ndim != 2:
        return None
    names = [str(name) for name in names]
    return names if len(names) == sample.tensors[0].shape[1] else None


# --- telling the framework -----------------------------------------------------------------------

def class_modules(obj: Any) -> set[str]:
    """Top-level packages of the classes in the object's MRO (``sklearn``, ``xgboost``, ``builtins``...)."""
    return {cls.__module__.split(".", 1)[0] for cls in type(obj).__mro__}


def detect_format(obj: Any) -> str:
    """The format to package ``obj`` as, or PackageError listing what is supported.

    Only frameworks the object's classes come from are looked at, and those are imported already.
    """
    tops = class_modules(obj)
    has_predict = callable(getattr(obj, "predict", None))
    if "xgboost" in tops:  # before sklearn: the XGBoost and LightGBM wrappers are scikit-learn estimators too
        return "xgboost"
    if "lightgbm" in tops:
        return "lightgbm"
    if "sentence_transformers" in tops:  # before torch: a SentenceTransformer is a torch module too
        return "huggingface"
    if "transformers" in tops and isinstance(obj, sys.modules["transformers"].Pipeline):
        return "huggingface"
    if "torch" in tops:
        torch = sys.modules["torch"]
        if isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram)):
            return "pytorch"
    if "onnx" in tops and isinstance(obj, sys.modules["onnx"].ModelProto):
        return "onnx"
    if "sklearn" in tops:
        if not has_predict:
            raise PackageError(f"a {type(obj).__name__} has no predict(); package a fitted estimator, or a Pipeline "
                               "that ends in one")
        return "sklearn"
    if has_predict:
        return "python"
    raise PackageError(f"cannot package a {_class_name(obj)}: expected {SUPPORTED}")


def choose_format(obj: Any, requested: str | None) -> str:
    """The detected format, or ``requested`` when it fits the object."""
    if requested is None:
        return detect_format(obj)
    try:
        wanted = normalise_format(requested)
    except ValueError as exc:
        raise PackageError(f"format: {exc}") from None
    if wanted not in WRITERS:
        raise PackageError(f"format: cannot package an object as '{requested}'; choose one of "
                           f"{', '.join(sorted(WRITERS))} (or custom)")
    has_predict = callable(getattr(obj, "predict", None))
    if wanted in ("python", "sklearn") and has_predict:
        return wanted  # any object with predict() pickles, and the sklearn runtime serves any estimator API
    detected = detect_format(obj)
    if wanted != detected:
        raise PackageError(f"format '{requested}' does not fit a {_class_name(obj)} (it is a {detected} model)")
    return wanted


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# --- writing the artifact --------------------------------------------------------------------------

def _pickler(obj: Any, by_value: bool) -> Any:
    """cloudpickle when it is installed, which pickles classes defined in ``__main__`` by value."""
    try:
        import cloudpickle
    except ModuleNotFoundError:
        if by_value:
            raise PackageError(f"the {type(obj).__name__} uses classes defined in __main__ (or lambdas), which only "
                               "cloudpickle can save: pip install cloudpickle") from None
        return pickle
    return cloudpickle


def _needs_value_pickle(obj: Any) -> tuple[bool, set[str]]:
    """Whether plain pickle cannot save ``obj`` for another process; the modules its pickle references."""
    try:
        modules = object_modules(obj, pickle.dumps)
    except (pickle.PicklingError, AttributeError, TypeError):
        return True, set()
    return "__main__" in modules, modules


def _write_pickled(obj: Any, folder: Path, fmt: str) -> Artifact:
    by_value, modules = _needs_value_pickle(obj)
    if not by_value:
        import joblib

        joblib.dump(obj, folder / "model.joblib")
        return Artifact("model.joblib", modules=modules | {"joblib"}, format=fmt)
    pickler = _pickler(obj, by_value)
    _dump(pickler, obj, folder / "model.pkl")
    return Artifact("model.pkl", modules=object_modules(obj, pickler.dumps), format=fmt)


def _dump(pickler: Any, obj: Any, path: Path) -> None:
    try:
        with open(path, "wb") as handle:
            pickler.dump(obj, handle)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an open file, a lock, a generator...
        raise PackageError(f"cannot pickle the {type(obj).__name__}: {first_line(exc)}") from None


def _write_sklearn(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    return _write_pickled(obj, folder, "sklearn")


def _write_xgboost(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    xgb = sys.modules["xgboost"]
    if not hasattr(obj, "save_model"):
        raise PackageError(f"cannot save a {_class_name(obj)}: expected an xgboost Booster or XGBModel")
    obj.save_model(str(folder / "model.ubj"))  # the wrapper records its kind, so it is served as itself
    # the scikit-learn wrapper needs scikit-learn wherever it is loaded
    return Artifact("model.ubj", modules={"sklearn"} if isinstance(obj, xgb.XGBModel) else set())


def _write_lightgbm(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    lgb = sys.modules["lightgbm"]
    if isinstance(obj, lgb.Booster):
        obj.save_model(str(folder / "model.txt"))
        return Artifact("model.txt")
    if hasattr(obj, "predict_proba"):  # a text model would serve probabilities as predict and lose the labels
        return _write_pickled(obj, folder, "lightgbm")
    obj.booster_.save_model(str(folder / "model.txt"))
    return Artifact("model.txt")


def _write_onnx(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    sys.modules["onnx"].save_model(obj, str(folder / "model.onnx"))
    return Artifact("model.onnx")


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Serving runs a module in eval mode (dropout off); the caller's module gets its mode back."""
    training = getattr(module, "training", False)
    if training:
        module.eval()
    try:
        yield
    finally:
        if training:
            module.train(True)


def _write_pytorch(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    torch = sys.modules["torch"]
    if isinstance(obj, torch.export.ExportedProgram):
        torch.export.save(obj, str(folder / "model.pt2"))
        return Artifact("model.pt2")
    if isinstance(obj, torch.jit.ScriptModule):
        obj.save(str(folder / "model.pt"))
        return Artifact("model.pt", _declared_inputs(obj, sample))
    if sample is None:
        raise PackageError("packaging a torch.nn.Module needs sample_input (a batch of inputs): torch.export "
                           "traces the module with it")
    with _eval_mode(obj):
        try:
            with _quiet_torch():
                program = _export(torch, obj, sample)
        except Exception as export_error:  # data-dependent control flow, unsupported ops: try TorchScript
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    scripted = torch.jit.script(obj)
            except Exception as script_error:
                dtypes = ", ".join(str(array.dtype) for array in sample.tensors)
                raise PackageError(
                    f"cannot save the {type(obj).__name__} for serving: torch.export failed on the sample ({dtypes}): "
                    f"{first_line(export_error)}; and torch.jit.script failed: {first_line(script_error)}"
                ) from export_error
            _warn(f"torch.export could not export the {type(obj).__name__} ({first_line(export_error)}); "
                  "it is saved as TorchScript (model.pt) instead")
            scripted.save(str(folder / "model.pt"))
            return Artifact("model.pt", _declared_inputs(scripted, sample))
    torch.export.save(program, str(folder / "model.pt2"))
    return Artifact("model.pt2")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """A failed export prints the traced graph on stderr and logs warnings; its exception says enough."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        torch_log.setLevel(level)


def _export(torch: Any, module: Any, sample: Sample) -> Any:
    """``torch.export`` with the batch dimension variable; a one-row sample is doubled, since torch
    specialises dimensions of size 1."""
    from torch.export import Dim

    rows = [np.concatenate([array, array]) if sample.rows == 1 else array for array in sample.tensors]
    tensors = [torch.tensor(array) for array in rows]
    dynamic = [{0: Dim.AUTO} for _ in tensors]
    if sample.names is not None:
        return torch.export.export(module, (), kwargs=dict(zip(sample.names, tensors)),
                                   dynamic_shapes=dict(zip(sample.names, dynamic)))
    return torch.export.export(module, tuple(tensors), dynamic_shapes=tuple(dynamic))


def _declared_inputs(scripted: Any, sample: Sample | None) -> dict[str, Any]:
    """TorchScript does not record its inputs: declare them from the sample, named as ``forward``'s arguments."""
    if sample is None:
        return {}
    try:
        names = [argument.name for argument in scripted.forward.schema.arguments[1:]]
    except (AttributeError, RuntimeError):
        names = []
    arrays = dict(zip(sample.names, sample.tensors)) if sample.names is not None else None
    if arrays is not None:
        names = [name for name in names if name in arrays] or list(arrays)
        tensors = [arrays[name] for name in names]
    else:
        tensors = sample.tensors
        if len(names) != len(tensors):
            names = [f"input-{index}" for index in range(len(tensors))]
    inputs = [{"name": name, "datatype": datatype_of(array.dtype), "shape": [-1, *array.shape[1:]]}
              for name, array in zip(names, tensors)]
    return {"inputs": inputs}


def _write_huggingface(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    target = folder / "model"
    if "sentence_transformers" in class_modules(obj):
        obj.save(str(target))
        return Artifact("model", modules={"sentence_transformers"})
    from shipyard.runtimes.huggingface import TEXT_TASKS

    task = getattr(obj, "task", None)
    if task not in TEXT_TASKS:
        raise PackageError(f"a transformers pipeline for task '{task}' cannot be served; Shipyard serves the text "
                           f"tasks {', '.join(sorted(TEXT_TASKS))}")
    obj.save_pretrained(str(target))
    return Artifact("model", {"task": task})


def _write_python(obj: Any, folder: Path, sample: Sample | None) -> Artifact:
    by_value, _ = _needs_value_pickle(obj)
    pickler = _pickler(obj, by_value)
    (folder / "data").mkdir()
    _dump(pickler, obj, folder / "data" / "model.pkl")
    as_dataframe = sample is not None and hasattr(sample.original, "iloc") and sample.columns is not None
    columns = sample.columns if sample is not None and as_dataframe else None
    (folder / "model.py").write_text(PICKLED_MODEL.format(columns=columns))
    modules = object_modules(obj, pickler.dumps)
    if columns is not None:
        modules.add("pandas")
    return Artifact(None, modules=modules)


WRITERS: dict[str, Callable[[Any, Path, Sample | None], Artifact]] = {
    "sklearn": _write_sklearn,
    "xgboost": _write_xgboost,
    "lightgbm": _write_lightgbm,
    "onnx": _write_onnx,
    "pytorch": _write_pytorch,
    "huggingface": _write_huggingface,
    "python": _write_python,
}


# --- what the object itself predicts ---------------------------------------------------------------

def reference_outputs(fmt: str, obj: Any, model: Model, sample: Sample) -> Tensors:
    """The object's own predictions on ``sample``, named as the runtime names its outputs."""
    try:
        return REFERENCES[fmt](obj, model, sample)
    except PackageError:
        raise
    except Exception as exc:
        raise PackageError(
            f"the {type(obj).__name__}'s own prediction failed on sample_input: {first_line(exc)}") from exc


def _single(sample: Sample) -> Any:
    """The user's sample as an estimator takes it (a DataFrame stays one, so feature names are checked)."""
    if sample.names is not None or len(sample.tensors) != 1:
        raise PackageError("sample_input: this model takes one input; give one array, not a dict or tuple")
    return sample.original if hasattr(sample.original, "iloc") else sample.tensors[0]


def _estimator_reference(obj: Any, model: Model, sample: Sample) -> Tensors:
    features = _single(sample)
    tops = class_modules(obj)
    if "xgboost" in tops and isinstance(obj, sys.modules["xgboost"].Booster):
        return {"predict": obj.predict(sys.modules["xgboost"].DMatrix(features))}
    if "lightgbm" in tops and isinstance(obj, sys.modules["lightgbm"].Booster):
        return {"predict": obj.predict(features)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {name: np.asarray(getattr(obj, name)(features)) for name in output_names(model) or ["predict"]
                if name in ("predict", "predict_proba")}


def _pytorch_reference(obj: Any, model: Model, sample: Sample) -> Tensors:
    from shipyard.runtimes.pytorch import flatten_outputs, to_array

    torch = sys.modules["torch"]
    module = obj.module() if isinstance(obj, torch.export.ExportedProgram) else obj
    tensors = [torch.tensor(array) for array in sample.tensors]
    with _eval_mode(module), torch.inference_mode():
        if sample.names is not None:
            result = module(**dict(zip(sample.names, tensors)))
        else:
            result = module(*tensors)
    named = flatten_outputs(result)
    names = output_names(model)
    if names and len(names) == len(named) and not isinstance(result, dict):
        named = [(name, value) for name, (_, value) in zip(names, named)]
    return {name: to_array(torch, name, value) for name, value in named}


def _onnx_reference(obj: Any, model: Model, sample: Sample) -> Tensors:
    """ONNX's own reference evaluator; a graph it cannot run is not compared (with a warning)."""
    from onnx.reference import ReferenceEvaluator

    feeds = {name: _as_str(array) for name, array in sample.bind(model.inputs).items()}
    try:
        results = ReferenceEvaluator(obj).run(None, feeds)
    except Exception as exc:
        _warn(f"could not check the package against onnx's reference evaluator ({first_line(exc)}); its "
              "outputs are onnxruntime's")
        return {}
    return dict(zip([output.name for output in obj.graph.output], results))


def _as_str(array: np.ndarray) -> np.ndarray:
    if array.dtype != object:
        return array
    return np.array([item.decode("utf-8") for item in array.ravel().tolist()], dtype=object).reshape(array.shape)


def _huggingface_reference(obj: Any, model: Model, sample: Sample) -> Tensors:
    from shipyard.runtimes.huggingface import EMBEDDING_TASKS, LABEL_TASKS, to_json

    texts = [item.decode("utf-8") for item in sample.bind(model.inputs)["text"].tolist()]
    task = getattr(model, "task", "")
    if task == "sentence-embedding":
        return {"embedding": np.asarray(obj.encode(texts, convert_to_numpy=True, show_progress_bar=False))}
    with _eval_mode(obj.model):  # a model built in this process may still be in training mode (dropout on)
        if task in LABEL_TASKS:
            best = [item[0] if isinstance(item, list) else item for item in obj(texts)]
            return {"label": np.array([item["label"] for item in best], dtype=object),
                    "score": np.array([item["score"] for item in best], dtype=np.float32)}
        if task in EMBEDDING_TASKS:
            vectors = obj(texts, return_tensors=True)
            return {"embedding": np.stack([vector[0].float().mean(dim=0).numpy() for vector in vectors])}
        return {"output": np.array([to_json(item) for item in obj(texts)], dtype=object)}


def _python_reference(obj: Any, model: Model, sample: Sample) -> Tensors:
    from shipyard.runtimes.custom import to_tensors

    # as the generated model.py calls it: one input alone, several as a dict by input name
    original = sample.original
    values = list(original.values()) if isinstance(original, dict) else list(original) if isinstance(original, tuple) \
        else [original]
    if len(values) == 1:
        return to_tensors(obj.predict(values[0]))
    return to_tensors(obj.predict(dict(zip(sample.bind(model.inputs), values))))


REFERENCES: dict[str, Callable[[Any, Model, Sample], Tensors]] = {
    "sklearn": _estimator_reference,
    "xgboost": _estimator_reference,
    "lightgbm": _estimator_reference,
    "onnx": _onnx_reference,
    "pytorch": _pytorch_reference,
    "huggingface": _huggingface_reference,
    "python": _python_reference,
}


# --- reading a trained object from a file (shipyard package OBJECT_FILE) ---------------------------

OBJECT_SUFFIXES = (".joblib", ".pkl", ".pickle", ".onnx", ".pt", ".pth", ".pt2")


def read_object(path: Path) -> Any:
    """The trained object saved in ``path``: a pickle or joblib file, an ONNX model, or a PyTorch file.

    Unpickling runs code from the file: read only files you trust.
    """
    if not path.is_file():
        raise PackageError(f"OBJECT_FILE '{path}' does not exist (or is a folder)")
    suffix = path.suffix.lower()
    if suffix in (".joblib", ".pkl", ".pickle"):
        from shipyard.runtimes.pickled import read_pickle

        try:
            return read_pickle(path)
        except AttributeError as exc:  # "Can't get attribute 'Model' on <module '__main__'>"
            raise PackageError(
                f"{path} refers to a class that cannot be found here ({exc}); a class defined in a script's "
                "__main__ must be pickled with cloudpickle, or package the object from Python with "
                "shipyard.package(obj, DIR, sample_input=...)"
            ) from None
        except (RuntimeError, ValueError) as exc:
            raise PackageError(str(exc)) from None
    if suffix == ".onnx":
        onnx = _import_for(path, "onnx", "onnx")
        try:
            return onnx.load_model(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise PackageError(f"{path} is not a readable ONNX model: {first_line(exc)}") from None
    if suffix in (".pt", ".pth", ".pt2"):
        return _read_torch(path)
    raise PackageError(f"cannot read OBJECT_FILE '{path}': expected one of {', '.join(OBJECT_SUFFIXES)}")


def _import_for(path: Path, module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise PackageError(f"reading {path} needs {module}: pip install 'shipyard[{extra}]'") from None


def _read_torch(path: Path) -> Any:
    torch = _import_for(path, "torch", "pytorch")
    from shipyard.runtimes.pytorch import archive_kind

    try:
        kind = archive_kind(path)
    except ValueError:
        kind = "pickle"  # torch.save of a whole module, or of a state_dict
    try:
        if kind == "export":
            return torch.export.load(str(path) if path.suffix == ".pt2" else io.BytesIO(path.read_bytes()))
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PackageError(f"{path} is not a readable PyTorch file: {first_line(exc)}") from None
    if not isinstance(loaded, torch.nn.Module):
        raise PackageError(
            f"{path} holds a {type(loaded).__name__} (a state_dict holds weights, not the module's code); load it "
            "into your module in Python and call shipyard.package(module, DIR, sample_input=...)"
        )
    return loaded
