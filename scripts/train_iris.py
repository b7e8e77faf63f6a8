"""Train the demo model: logistic regression on iris, saved with joblib."""

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output/iris.joblib")
target.parent.mkdir(parents=True, exist_ok=True)
features, labels = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(features, labels)
joblib.dump(model, target)
print(f"trained LogisticRegression on iris (accuracy {model.score(features, labels):.3f}) -> {target}")
