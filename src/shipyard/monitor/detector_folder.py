"""A detector folder: ``detector.yaml`` plus its reference sample, served by ``shipyard serve FOLDER``.

The folder is to a detector what a model package is to a model: ``shipyard serve FOLDER``,
``shipyard monitor serve --config FOLDER``, and an InferenceService with ``modelFormat: {name:
detector}`` and ``storageUri: FOLDER`` all run it as a CloudEvents receiver that also speaks the
inference protocol (receiver.py). ``detector.yaml``::

    detector: drift                # drift | outlier | bias | package.module:Class
    reference: reference.parquet   # .csv/.parquet/.npy (relative to the folder), or a model package
    label_column: label            # a column of the reference to drop (optional)
    alert_url: http://127.0.0.1:9000/alerts
    window: 200                    # and: min_rows, alpha, correction, categorical, method, threshold,
    alpha: 0.05                    #      percentile, protected, positive_label, seed
    options: {}                    # more keyword options for a custom detector
    state: {path: state.json, interval_s: 10}   # or false; default $SHIPYARD_HOME/monitor/<name>/state.json

A ``reference`` naming a Shipyard model package (a folder with ``shipyard.yaml``) takes the file its
``reference`` key names (relative to the package; a 2-D ``.npy`` gets the column names its single
input declares), else the inputs of its ``examples.yaml`` (a weak reference when there are few rows:
a warning says so). Every option must be one the detector's constructor takes: ``alpha`` on an
outlier detector is an error naming the key, not silently ignored.

The state file: ``state.path`` (relative to the folder, or absolute), else ``$SHIPYARD_DETECTOR_STATE``,
else ``$SHIPYARD_HOME/monitor/<name>/state.json``, ``name`` being ``--name`` or the folder's name.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import msgspec
from msgspec import Meta

log = logging.getLogger("shipyard.monitor")

DETECTOR_FILE = "detector.yaml"
REFERENCE_SUFFIXES = (".csv", ".parquet", ".pq", ".npy")
#: The options of ``shipyard monitor serve`` that go to the detector's constructor.
DETECTOR_OPTIONS = ("window", "min_rows", "alpha", "correction", "categorical", "method", "threshold", "percentile",
                    "protected", "positive_label", "seed")
#: Below this many rows, a reference taken from a package's examples.yaml gets a warning.
SMALL_REFERENCE = 30

PositiveInt = Annotated[int, Meta(ge=1)]
Scalar = Union[bool, int, float, str]


class DetectorConfigError(ValueError):
    """``detector.yaml`` or its reference is invalid; the message names the file and the key."""


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Where the state is saved and how often (when it changed)."""

    path: str | None = None
    interval_s: Annotated[float, Meta(gt=0)] = 10.0


class DetectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The whole ``detector.yaml``."""

    #: drift, outlier, bias, or a custom detector class as package.module:Class.
    detector: str
    #: A .csv, .parquet or .npy file (relative to the folder), or a Shipyard model package folder.
    reference: str
    #: The model name it serves under when not given by --name (default: the folder's name).
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None = None
    label_column: str | None = None
    alert_url: Annotated[str, Meta(pattern=r"^https?://\S+$")] | None = None
    window: PositiveInt | None = None
    min_rows: PositiveInt | None = None
    alpha: Annotated[float, Meta(gt=0, lt=1)] | None = None
    correction: Literal["bonferroni", "bh"] | None = None
    categorical: list[str] | None = None
    method: Literal["isolation_forest", "mahalanobis"] | None = None
    threshold: Annotated[float, Meta(ge=0)] | None = None
    percentile: Annotated[float, Meta(gt=0, le=100)] | None = None
    protected: str | None = None
    positive_label: Scalar | None = None
    seed: int | None = None
    #: More keyword options for a custom detector's constructor.
    options: dict[str, Any] = {}
    #: false: no state; a mapping: where and how often.
    state: Union[bool, StateConfig] = True


KNOWN_KEYS = tuple(DetectorConfig.__struct_fields__)


@dataclass
class DetectorFolder:
    """A parsed detector folder: its config, the reference sample and where its state goes."""

    folder: Path
    config: DetectorConfig
    name: str
    options: dict[str, Any]
    reference: Any  # pandas.DataFrame (pandas is imported only when a folder is loaded)
    reference_source: str
    state_path: Path | None
    warnings: list[str] = field(default_factory=list)


def is_detector_folder(path: str | Path) -> bool:
    """Is ``path`` a folder with a ``detector.yaml``?"""
    path = Path(path)
    return path.is_dir() and (path / DETECTOR_FILE).is_file()


def read_detector_config(folder: str | Path) -> DetectorConfig:
    """Parse and check ``folder/detector.yaml``; DetectorConfigError names the key that is wrong."""
    import yaml

    from shipyard.package.config import explain

    path = Path(folder) / DETECTOR_FILE
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DetectorConfigError(f"cannot read {where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise DetectorConfigError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DetectorConfigError(f"{where}: expected a mapping with at least 'detector' and 'reference', "
                                  f"got {type(raw).__name__ if raw is not None else 'an empty file'}")
    for key in raw:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; the keys are {', '.join(KNOWN_KEYS)}"
            raise DetectorConfigError(f"{where}: {key}: unknown key{hint}")
    for key in ("detector", "reference"):
        if raw.get(key) in (None, ""):
            raise DetectorConfigError(f"{where}: {key}: is required" + (
                " (drift, outlier, bias or package.module:Class)" if key == "detector" else
                " (a .csv, .parquet or .npy file in the folder, or a Shipyard model package)"))
    try:
        config = msgspec.convert(raw, DetectorConfig)
    except msgspec.ValidationError as exc:
        raise DetectorConfigError(explain(exc, raw, where)) from None
    _check_options(config, where)
    return config


def _check_options(config: DetectorConfig, where: str) -> None:
    """Each option set must be one the detector's constructor takes."""
    from shipyard.monitor.detectors.base import detector_class

    try:
        cls = detector_class(config.detector)
    except ValueError as exc:
        raise DetectorConfigError(f"{where}: detector = {config.detector!r}: {exc}") from None
    parameters = inspect.signature(cls).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n, p in parameters.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                   inspect.Parameter.VAR_KEYWORD)]
    for key in DETECTOR_OPTIONS:
        if getattr(config, key) is None:
            continue
        if key in config.options:
            raise DetectorConfigError(f"{where}: options.{key}: also given as the key '{key}'; give it once")
        if not takes_all and key not in parameters:
            raise DetectorConfigError(f"{where}: {key}: the {config.detector} detector has no such option "
                                      f"(it takes {', '.join(accepted) or 'none'})")
    for key in config.options:
        if not takes_all and key not in parameters:
            raise DetectorConfigError(f"{where}: options.{key}: the {config.detector} detector has no such option "
                                      f"(it takes {', '.join(accepted) or 'none'})")


def detector_options(config: DetectorConfig) -> dict[str, Any]:
    """The keyword options for the detector's constructor."""
    options = {key: getattr(config, key) for key in DETECTOR_OPTIONS if getattr(config, key) is not None}
    return {**options, **config.options}


def load_folder(folder: str | Path, name: str | None = None, state_path: str | Path | None = None) -> DetectorFolder:
    """Read a detector folder: config, reference sample, name and state file (DetectorConfigError when
    anything is wrong)."""
    folder = Path(folder).expanduser().resolve()
    if not is_detector_folder(folder):
        raise DetectorConfigError(f"{folder} is not a detector folder (it has no {DETECTOR_FILE})")
    config = read_detector_config(folder)
    where = str(folder / DETECTOR_FILE)
    reference, source, warnings = load_reference(config, folder, where)
    served = name or config.name or folder.name
    return DetectorFolder(folder, config, served, detector_options(config), reference, source,
                          _state_path(config, folder, served, state_path), warnings)


def _state_path(config: DetectorConfig, folder: Path, name: str, override: str | Path | None) -> Path | None:
    from shipyard.monitor.state import STATE_ENV, default_state_path

    if override is not None:
        return Path(override).expanduser()
    if config.state is False:
        return None
    if isinstance(config.state, StateConfig) and config.state.path:
        path = Path(config.state.path).expanduser()
        return path if path.is_absolute() else folder / path
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    return default_state_path(name)


def state_interval(config: DetectorConfig) -> float:
    return config.state.interval_s if isinstance(config.state, StateConfig) else 10.0


# -- the reference sample ----------------------------------------------------------------------------
def load_reference(config: DetectorConfig, folder: Path, where: str) -> tuple[Any, str, list[str]]:
    """(the reference DataFrame, where it came from, warnings)."""
    from shipyard.package.config import CONFIG_FILE

    path = Path(config.reference).expanduser()
    path = path if path.is_absolute() else folder / path
    key = f"{where}: reference = {config.reference!r}"
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise DetectorConfigError(f"{key}: {path} is a folder but not a Shipyard model package (no {CONFIG_FILE})")
        return package_reference(path, config.label_column, key)
    if not path.exists():
        raise DetectorConfigError(f"{key}: {path} does not exist (a relative path is relative to {folder})")
    if path.suffix.lower() not in REFERENCE_SUFFIXES:
        raise DetectorConfigError(f"{key}: use a .csv, .parquet or .npy file, or a Shipyard model package")
    return _read(path, config.label_column, None, key), str(path), []


def _read(path: Path, label_column: str | None, columns: list[str] | None, key: str) -> Any:
    from shipyard.monitor.receiver import read_reference

    try:
        frame = read_reference(path, label_column, columns)
    except (ValueError, OSError, ImportError) as exc:
        raise DetectorConfigError(f"{key}: cannot read {path.name}: {exc}") from None
    if frame.empty or not len(frame.columns):
        raise DetectorConfigError(f"{key}: {path.name} has no rows")
    return frame


def package_reference(package: Path, label_column: str | None, key: str) -> tuple[Any, str, list[str]]:
    """A model package's reference: the file its ``reference`` key names, else its examples' inputs."""
    from shipyard.package.config import CONFIG_FILE, PackageError, read_config

    try:
        config, _, _ = read_config(package)
    except PackageError as exc:
        raise DetectorConfigError(f"{key}: {exc}") from None
    columns = package_columns(config)
    if config.reference:
        path = Path(config.reference).expanduser()
        path = path if path.is_absolute() else package / path
        where = f"{key}: {package / CONFIG_FILE}: reference = {config.reference!r}"
        if not path.is_file():
            raise DetectorConfigError(f"{where}: {path} does not exist")
        if path.suffix.lower() not in REFERENCE_SUFFIXES:
            raise DetectorConfigError(f"{where}: use a .csv, .parquet or .npy file")
        return _read(path, label_column, columns, where), str(path), []
    frame = examples_frame(package, columns, key)
    if label_column:
        if label_column not in frame.columns:
            raise DetectorConfigError(f"{key}: label column {label_column!r} is not among the examples' inputs "
                                      f"({', '.join(map(str, frame.columns))})")
        frame = frame.drop(columns=[label_column])
    warnings = []
    if len(frame) < SMALL_REFERENCE:
        warnings.append(f"the reference is the {len(frame)} input row(s) of {package}/examples.yaml, too few for "
                        f"trustworthy tests; add `reference: <a sample file>` to {package / CONFIG_FILE}")
    return frame, f"{package}/examples.yaml", warnings


def package_columns(config: Any) -> list[str] | None:
    """Column names a package declares: its single [-1, n] input's ``columns``, or one 1-D input per column."""
    inputs = config.inputs or []
    if len(inputs) == 1 and inputs[0].columns:
        return [c if isinstance(c, str) else c.name for c in inputs[0].columns]
    if len(inputs) > 1 and all(len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1) for t in inputs):
        return [t.name for t in inputs]
    return None


def examples_frame(package: Path, columns: list[str] | None, key: str) -> Any:
    """The rows of every example's inputs in a package's examples.yaml."""
    import numpy as np
    import pandas as pd

    from shipyard.package.config import CONFIG_FILE, PackageError
    from shipyard.package.examples import read_examples

    try:
        examples = read_examples(package)
    except PackageError as exc:
        raise DetectorConfigError(f"{key}: the package declares no `reference:` in its {CONFIG_FILE}, and its "
                                  f"examples cannot stand in: {exc}") from None
    frames = []
    for example in examples:
        tensors = example.inputs
        if len(tensors) == 1:
            values = np.asarray(next(iter(tensors.values())).values)
            values = values.reshape(1, -1) if values.ndim == 1 else values.reshape(values.shape[0], -1)
            names = columns if columns is not None and len(columns) == values.shape[1] else \
                [f"f{i}" for i in range(values.shape[1])]
            frames.append(pd.DataFrame(values, columns=names))
        else:
            frames.append(pd.DataFrame({name: np.asarray(t.values).reshape(-1) for name, t in tensors.items()}))
    try:
        frame = pd.concat(frames, ignore_index=True)
    except ValueError as exc:
        raise DetectorConfigError(f"{key}: the examples' inputs do not make one table: {exc}") from None
    return frame.infer_objects()


# -- serving -----------------------------------------------------------------------------------------
def build_folder(loaded: DetectorFolder, **overrides: Any) -> Any:
    """The receiver app (``DetectorApp``) of a loaded folder; ``overrides`` (not None) win over its config."""
    from shipyard.monitor.receiver import build

    from shipyard.monitor.detectors.base import detector_class

    config = loaded.config
    given = {k: v for k, v in overrides.items() if v is not None and k in DETECTOR_OPTIONS}
    parameters = inspect.signature(detector_class(config.detector)).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for key in given:
            if key not in parameters:
                raise DetectorConfigError(f"--{key.replace('_', '-')}: the {config.detector} detector of "
                                          f"{loaded.folder} has no such option")
    options = {**loaded.options, **given}
    alert_url = overrides.get("alert_url") or config.alert_url
    try:
        return build(config.detector, loaded.reference, alert_url=alert_url, name=loaded.name,
                     state_path=loaded.state_path, state_interval_s=state_interval(config), **options)
    except (ValueError, TypeError) as exc:
        raise DetectorConfigError(f"{loaded.folder / DETECTOR_FILE}: {exc}") from None


def serve_folder(folder: str | Path, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                 state_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 warn: Callable[[str], None] = log.warning) -> None:
    """Serve a detector folder until SIGTERM/SIGINT (then drain and save the state). Raises
    DetectorConfigError for a bad folder and OSError when the port cannot be had."""
    import asyncio

    from shipyard import __version__
    from shipyard.monitor.receiver import run

    loaded = load_folder(folder, name, state_path)
    for warning in loaded.warnings:
        warn(warning)
    app = build_folder(loaded, **(overrides or {}))

    def announce(url: str) -> None:
        print(f"Shipyard {__version__} {app.name} detector '{app.model_name}' listening on {url} (reference: "
              f"{loaded.reference_source}, {len(loaded.reference)} rows; state: {loaded.state_path or 'not kept'})",
              flush=True)

    asyncio.run(run(app, host, port, announce))
