"""The background sample a model-agnostic or linear explainer compares rows with.

From the package: the file named by ``explainer.background`` (a .csv whose header row names the
features, a .parquet file, or a .npy array), else a ``background.csv|parquet|npy`` next to the model
(the shap format), else the inputs of ``examples.yaml``. At most ``max_background_rows`` rows are
kept, sampled with a fixed seed so that answers repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".csv", ".parquet", ".npy")
#: Files the shap format looks for in its folder when no ``explainer.background`` is set.
DEFAULT_FILES = tuple(f"background{suffix}" for suffix in SUFFIXES)
EXAMPLES_FILE = "examples.yaml"
SEED = 0


class BackgroundError(ValueError):
    """The background sample cannot be read; the message names the file or key."""


@dataclass(frozen=True)
class Background:
    """Rows × features (float64), the features' names when the file gives them, and where it came from."""

    data: np.ndarray
    feature_names: list[str] | None
    origin: str

    @property
    def width(self) -> int:
        return int(self.data.shape[1])


def read_table(path: Path, where: str) -> tuple[np.ndarray, list[str] | None]:
    """A numeric 2-D table from a .csv (with or without a header row), .parquet or .npy file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BackgroundError(f"{where}: {path} does not exist")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise BackgroundError(f"{where}: {path.name} is not a numeric .npy array ({exc})") from None
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise BackgroundError(f"{where}: {path.name} must hold a 2-D numeric array (rows × features), "
                                  f"got {array.dtype} with shape {list(array.shape)}")
        return array.astype(np.float64), None
    if suffix not in SUFFIXES:
        raise BackgroundError(f"{where}: {path.name}: expected a {', '.join(SUFFIXES)} file")
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        if suffix == ".csv" and all(_is_number(name) for name in frame.columns):
            frame = pd.read_csv(path, header=None)  # no header row: the first row is data
    except Exception as exc:  # pandas' and pyarrow's many parse errors
        raise BackgroundError(f"{where}: cannot read {path.name}: {exc}") from None
    names = [str(name) for name in frame.columns]
    for name in frame.columns:
        if frame[name].dtype.kind not in "biuf":
            raise BackgroundError(f"{where}: {path.name}: column '{name}' is not numeric; "
                                  "the built-in explainers take numeric features")
    if frame.empty:
        raise BackgroundError(f"{where}: {path.name} has no rows")
    header = None if all(isinstance(name, (int, np.integer)) for name in frame.columns) else names
    return frame.to_numpy(dtype=np.float64), header


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def sample_rows(data: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows, drawn without replacement with a fixed seed (in their original order)."""
    if len(data) <= limit:
        return data
    picked = np.sort(np.random.default_rng(SEED).choice(len(data), size=limit, replace=False))
    return data[picked]


def examples_rows(folder: Path, input_name: str | None) -> np.ndarray | None:
    """The rows of the examples' inputs (the one input, or ``input_name``), or None without examples."""
    path = folder / EXAMPLES_FILE
    if not path.is_file():
        return None
    import yaml

    where = f"{path} (the explainer's background)"
    try:
        examples = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BackgroundError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(examples, list):
        raise BackgroundError(f"{where}: expected a list of examples")
    rows = []
    for index, example in enumerate(examples):
        inputs = example.get("inputs") if isinstance(example, dict) else None
        if not isinstance(inputs, dict) or not inputs:
            raise BackgroundError(f"{where}: example #{index + 1} has no inputs")
        if input_name in inputs:
            value = inputs[input_name]
        elif len(inputs) == 1:
            value = next(iter(inputs.values()))
        else:
            raise BackgroundError(f"{where}: example #{index + 1} has several inputs ({', '.join(inputs)}); "
                                  f"the explainer needs one 2-D input")
        rows.append(_example_rows(value, f"{where}: example #{index + 1}"))
    widths = {block.shape[1] for block in rows}
    if len(widths) != 1:
        raise BackgroundError(f"{where}: the examples' inputs have different widths: {sorted(widths)}")
    return np.concatenate(rows)


def _example_rows(value: Any, where: str) -> np.ndarray:
    data, shape = (value.get("data"), value.get("shape")) if isinstance(value, dict) else (value, None)
    try:
        array = np.asarray(data, dtype=np.float64)
        if shape is not None:
            array = array.reshape(shape)
    except (TypeError, ValueError) as exc:
        raise BackgroundError(f"{where}: the input is not a numeric table ({exc})") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BackgroundError(f"{where}: the input must be rows × features, got shape {list(array.shape)}")
    return array


def load_background(folder: Path, file: str | None, max_rows: int, input_name: str | None = None,
                    defaults: tuple[str, ...] = ()) -> Background | None:
    """The package's background sample: ``file`` (the ``explainer.background`` key), else the first of
    ``defaults`` in ``folder``, else the examples' inputs; None when there is none."""
    if file is not None:
        data, names = read_table(folder / file, f"explainer.background = '{file}'")
        return Background(sample_rows(data, max_rows), names, file)
    for default in defaults:
        if (folder / default).is_file():
            data, names = read_table(folder / default, f"background file {folder / default}")
            return Background(sample_rows(data, max_rows), names, default)
    rows = examples_rows(folder, input_name)
    if rows is None:
        return None
    return Background(sample_rows(rows, max_rows), None, EXAMPLES_FILE)
