"""Train the demo model (logistic regression on iris) the way a notebook would, and package it.

Writes ``<out>/iris.joblib`` (the bare artifact) and ``<out>/iris`` (a model package made by
``shipyard.package``: the model, shipyard.yaml with its signature and pinned requirements, and
examples.yaml checked against the model's own predictions).
"""

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import shipyard

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
out.mkdir(parents=True, exist_ok=True)
features, labels = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(features, labels)
joblib.dump(model, out / "iris.joblib")
print(f"trained LogisticRegression on iris (accuracy {model.score(features, labels):.3f})")

package = shipyard.package(model, out / "iris", sample_input=features[[0, 60, 120]], name="iris", overwrite=True)
print(f"packaged it: {package}")
for path in sorted(package.iterdir()):
    print(f"  {path.name}")
