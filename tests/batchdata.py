"""Models and tables for the batch prediction tests: a scikit-learn artifact, model.py folders that fail on
some rows or are slow, and tables written as Parquet, CSV or JSON Lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ["a", "b", "c", "d"]

#: A model.py whose predict fails for rows with a > 2.5 (the whole call fails, as a real model's would).
RAISING_MODEL = '''
    import numpy as np

    class Model:
        def load(self):
            pass

        def predict(self, inputs):
            a = np.asarray(inputs["a"], dtype=float)
            if (a > 2.5).any():
                raise ValueError(f"a is too large: {a[a > 2.5][0]:.3f}")
            return {"score": a * 2 + np.asarray(inputs["b"], dtype=float)}
'''

#: A model.py that takes ``SLEEP`` seconds per predict call (so a run can be killed half-way).
SLOW_MODEL = '''
    import time
    import numpy as np

    SLEEP = {sleep}

    class Model:
        def load(self):
            pass

        def predict(self, inputs):
            time.sleep(SLEEP)
            return {{"score": np.asarray(inputs["a"], dtype=float) * 2 + np.asarray(inputs["b"], dtype=float)}}
'''


def write_model_py(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(source))
    return folder


def train_classifier(path: Path, features: int = 4, seed: int = 0) -> Path:
    """A LogisticRegression on ``features`` float columns, saved with joblib."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, features))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(x, y), path)
    return path


def make_frame(rows: int, seed: int = 1) -> Any:
    """``id`` (text) and the float columns a, b, c, d."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    frame.insert(0, "id", [f"row-{i}" for i in range(rows)])
    return frame


def write_table(frame: Any, path: Path, fmt: str | None = None) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        with open(path, "w") as handle:
            for record in frame.to_dict(orient="records"):
                handle.write(json.dumps(record) + "\n")
    return path


def read_table(path: Path, fmt: str | None = None) -> Any:
    import pandas as pd

    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path)
    return pd.read_json(path, lines=True, dtype=False)


def read_errors(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def manifest_chunks(work: str | Path) -> int:
    """Done chunks recorded in a run's manifest (0 when there is none yet)."""
    manifest = Path(work) / "manifest.jsonl"
    try:
        lines = manifest.read_text().splitlines()[1:]
    except OSError:
        return 0
    count = 0
    for line in lines:
        try:
            count += "chunk" in json.loads(line)
        except ValueError:
            pass
    return count
