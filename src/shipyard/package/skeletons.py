"""``shipyard init DIR --format F``: a working package to start from, one per format.

Each skeleton has a ``train.py`` that trains a tiny model on a built-in or generated dataset (no
download) and writes the artifact; init runs that very file, so it reproduces what was packaged.
The custom skeleton has a ``model.py`` instead. Then, as for ``shipyard.package``, the package is
loaded by its real runtime: the signature it serves goes into a commented ``shipyard.yaml``,
``examples.yaml`` gets outputs computed through the runtime, ``requirements.txt`` is pinned to
the versions installed here, and a README says what next. Written to a staging folder, renamed
into place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.package.config import CONFIG_FILE, REQUIREMENTS_FILE, PackageError, check_name, read_config
from shipyard.package.pins import format_requirements
from shipyard.package.probe import (check_target, examples, first_line, infer, loaded, output_names, publish,
                                    signature, staging, write_config, write_examples, yaml_text)
from shipyard.package.sample import Sample
from shipyard.runtimes.registry import normalise_format

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
#: One flower of each species (rows 0, 50 and 100 of the iris data set).
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]


@dataclass(frozen=True)
class Skeleton:
    """The files of one format's starting package and how to try it."""

    format: str
    #: Modules init needs (checked before anything is written), and the pip extra that installs them.
    needs: tuple[str, ...]
    extra: str
    #: Relative path -> file text; ``train.py`` is run to write the artifact.
    files: dict[str, str]
    #: The artifact train.py writes (None: the folder's model.py).
    artifact: str | None
    #: Rows the examples are made of, as ``shipyard.package`` takes a sample.
    sample: Any
    columns: list[str] | None = None
    #: Extra shipyard.yaml keys (the Hugging Face task).
    config: dict[str, Any] = field(default_factory=dict)
    #: Modules to pin besides the format's framework.
    modules: tuple[str, ...] = ()
    #: What the model is, for the README.
    about: str = ""


SKLEARN_TRAIN = '''\
"""Trains the model this package serves: a scikit-learn pipeline on the iris flowers, saved as model.joblib.

Edit it, run `python train.py`, then update the expected outputs in examples.yaml (`shipyard test .`
shows what changed).
"""

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def train():
    features, species = load_iris(return_X_y=True)  # ships with scikit-learn: no download
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return model.fit(features, species)


if __name__ == "__main__":
    joblib.dump(train(), HERE / "model.joblib")
    print("wrote", HERE / "model.joblib")
'''

XGBOOST_TRAIN = '''\
"""Trains the model this package serves: an XGBoost classifier of the iris flowers, saved as model.ubj.

The scikit-learn wrapper's save_model records that it is a classifier, so the package serves
labels (predict) and probabilities (predict_proba). Edit it, run `python train.py`, then update the
expected outputs in examples.yaml (`shipyard test .` shows what changed).
"""

from pathlib import Path

import xgboost as xgb
from sklearn.datasets import load_iris

HERE = Path(__file__).resolve().parent


def train():
    features, species = load_iris(return_X_y=True)  # ships with scikit-learn: no download
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3, random_state=0, n_jobs=1)
    return model.fit(features, species)


if __name__ == "__main__":
    train().save_model(HERE / "model.ubj")
    print("wrote", HERE / "model.ubj")
'''

LIGHTGBM_TRAIN = '''\
"""Trains the model this package serves: a LightGBM regressor on generated data, saved as model.txt.

The target is 3*x0 - 2*x1 + 0.5*x2^2 plus noise. Edit it, run `python train.py`, then update the
expected outputs in examples.yaml (`shipyard test .` shows what changed).
"""

from pathlib import Path

import lightgbm as lgb
import numpy as np

HERE = Path(__file__).resolve().parent


def train():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 3))
    target = 3 * features[:, 0] - 2 * features[:, 1] + 0.5 * features[:, 2] ** 2 + rng.normal(scale=0.1, size=500)
    parameters = {"objective": "regression", "num_leaves": 15, "learning_rate": 0.1, "verbose": -1,
                  "seed": 0, "deterministic": True, "num_threads": 1}
    return lgb.train(parameters, lgb.Dataset(features, target), num_boost_round=50)


if __name__ == "__main__":
    train().save_model(str(HERE / "model.txt"))
    print("wrote", HERE / "model.txt")
'''

ONNX_TRAIN = '''\
"""Builds the model this package serves: a linear regression fitted with numpy, written as an ONNX graph.

The graph is y = x @ weights + bias (MatMul, Add), built with onnx.helper; "batch" names a variable
dimension. Edit it, run `python train.py`, then update the expected outputs in examples.yaml
(`shipyard test .` shows what changed).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8  # readable by older onnxruntime releases too


def train():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 4))
    target = features @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.25 + rng.normal(scale=0.05, size=200)
    design = np.hstack([features, np.ones((len(features), 1))])  # a column of ones fits the bias
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    weights = solution[:-1].reshape(4, 1).astype(np.float32)
    bias = solution[-1:].astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weights"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["y"])],
        "linear_regression",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="shipyard init")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save_model(train(), str(HERE / "model.onnx"))
    print("wrote", HERE / "model.onnx")
'''

PYTORCH_TRAIN = '''\
"""Trains the model this package serves: a small PyTorch classifier, saved with torch.export as model.pt2.

It learns whether a 2-D point lies inside the unit circle and returns the probabilities of
[outside, inside]. torch.export records the inputs and outputs, with "batch" a variable dimension.
Edit it, run `python train.py`, then update the expected outputs in examples.yaml (`shipyard test .`
shows what changed).
"""

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, points):
        return self.layers(points).softmax(dim=1)


def train():
    torch.manual_seed(0)
    points = torch.randn(400, 2)
    inside = (points.pow(2).sum(dim=1) < 1.0).long()
    model = Classifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model.layers(points), inside)  # on the logits, before softmax
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def export(model):
    batch = torch.export.Dim("batch")
    return torch.export.export(model, (torch.zeros(2, 2),), dynamic_shapes=({0: batch},))


if __name__ == "__main__":
    torch.export.save(export(train()), str(HERE / "model.pt2"))
    print("wrote", HERE / "model.pt2")
'''

HUGGINGFACE_TRAIN = '''\
"""Trains the model this package serves: a tiny BERT sentiment classifier, saved to model/ with save_pretrained.

Everything is made here, offline: a word-level tokenizer over a small vocabulary, and a one-layer
BERT trained for a few steps on eight sentences. It is a stand-in for your own model: put any
transformers model and its tokenizer in model/ (save_pretrained) and set `task` in shipyard.yaml.
Edit it, run `python train.py`, then update the expected outputs in examples.yaml (`shipyard test .`
shows what changed).
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("i a an the this film movie plot acting was is it great good wonderful loved love fine "
         "bad awful boring hated hate terrible").split()
SENTENCES = [
    ("a great film", "positive"), ("the acting was wonderful", "positive"), ("i loved this movie", "positive"),
    ("good plot", "positive"), ("a bad film", "negative"), ("the acting was awful", "negative"),
    ("i hated this movie", "negative"), ("boring plot", "negative"),
]
LABELS = ["negative", "positive"]


def make_tokenizer():
    vocabulary = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)


def train():
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    model = BertForSequenceClassification(config)
    batch = tokenizer([text for text, _ in SENTENCES], padding=True, return_tensors="pt")
    labels = torch.tensor([LABELS.index(label) for _, label in SENTENCES])
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.train()
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), tokenizer


if __name__ == "__main__":
    model, tokenizer = train()
    model.save_pretrained(HERE / "model")
    tokenizer.save_pretrained(HERE / "model")
    print("wrote", HERE / "model")
'''

CUSTOM_MODEL = '''\
"""A custom model: any Python code can serve.

Shipyard imports this file, makes one Model (its constructor gets the arguments it names:
`config` is shipyard.yaml as a dict, `data_dir` this package's data/ folder, `name` the model's
name), calls load() once, then predict() for every request (or batch of requests). It may also
define preprocess(inputs) and postprocess(outputs); any of the three may be `async def`. Plain
methods run in the model's own thread, so a slow predict never blocks health checks.
"""

import json

import numpy as np


class Model:
    def __init__(self, config, data_dir):
        self.data_dir = data_dir
        # The signature declared in shipyard.yaml: the server checks every request against it.
        self.inputs = config.get("inputs")
        self.outputs = config.get("outputs")

    def load(self):
        # Read weights, open files, warm caches: done once, before the server reports ready.
        settings = json.loads((self.data_dir / "weights.json").read_text())
        self.weights = np.array(settings["weights"])
        self.bias = float(settings["bias"])

    def predict(self, inputs):
        # inputs: input name -> numpy array whose first dimension is the batch (text arrives as bytes).
        features = inputs["features"]
        score = features @ self.weights + self.bias
        # Return an array (served as output-0) or a dict of output name -> array.
        return {"score": score, "positive": (score > 0).astype(np.int64)}
'''

CUSTOM_WEIGHTS = '{"weights": [0.5, -1.25, 2.0], "bias": -0.1}\n'

SKELETONS: dict[str, Skeleton] = {
    "sklearn": Skeleton(
        "sklearn", ("sklearn", "joblib"), "sklearn", {"train.py": SKLEARN_TRAIN}, "model.joblib",
        np.array(IRIS_ROWS), IRIS_COLUMNS,
        about="a scikit-learn pipeline (scaler + logistic regression) classifying iris flowers",
    ),
    "xgboost": Skeleton(
        "xgboost", ("xgboost", "sklearn"), "xgboost", {"train.py": XGBOOST_TRAIN}, "model.ubj",
        np.array(IRIS_ROWS), IRIS_COLUMNS, modules=("sklearn",),
        about="an XGBoost classifier of iris flowers",
    ),
    "lightgbm": Skeleton(
        "lightgbm", ("lightgbm",), "lightgbm", {"train.py": LIGHTGBM_TRAIN}, "model.txt",
        np.array([[0.5, -1.0, 0.2], [1.2, 0.3, -0.7], [-0.4, 0.8, 1.5]]), ["x0", "x1", "x2"],
        about="a LightGBM regressor trained on generated data",
    ),
    "onnx": Skeleton(
        "onnx", ("onnx", "onnxruntime"), "onnx", {"train.py": ONNX_TRAIN}, "model.onnx",
        np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0], [-0.5, 0.25, 2.0, -1.5]], dtype=np.float32),
        about="a linear regression as an ONNX graph",
    ),
    "pytorch": Skeleton(
        "pytorch", ("torch",), "pytorch", {"train.py": PYTORCH_TRAIN}, "model.pt2",
        np.array([[0.1, 0.2], [1.5, -0.3], [-0.9, 0.8]], dtype=np.float32),
        about="a small PyTorch classifier exported with torch.export",
    ),
    "huggingface": Skeleton(
        "huggingface", ("torch", "transformers", "tokenizers"), "huggingface", {"train.py": HUGGINGFACE_TRAIN},
        "model", ["a wonderful movie", "the plot was boring", "i loved the acting"],
        config={"task": "text-classification"},
        about="a tiny BERT sentiment classifier (transformers text-classification pipeline)",
    ),
    "python": Skeleton(
        "python", (), "", {"model.py": CUSTOM_MODEL, "data/weights.json": CUSTOM_WEIGHTS}, None,
        {"features": np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [-2.0, 1.0, 0.5]])},
        about="a custom model.py (a linear score with weights in data/weights.json)",
    ),
}
FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "huggingface", "custom")

KEY_COMMENTS = {
    "name": "The model's name in URLs: /v2/models/<name>/infer.",
    "version": "Reported in the model's metadata; change it when you retrain.",
    "format": "The runtime that serves it: sklearn, xgboost, lightgbm, onnx, pytorch, huggingface or python\n"
              "# (model.py).",
    "artifact": "The model file or folder that train.py writes, relative to this folder.",
    "task": "The transformers pipeline task the model runs.",
    "inputs": "The signature, checked on every request over REST and gRPC (-1: any size; the first dimension is\n"
              "# the batch). `columns` name the features of a table input.",
    "outputs": None,
}
CONFIG_FOOTER = """
# pip requirements: requirements.txt, pinned to the versions this package was made with.
# More keys (docs/packaging.md): description, predict_proba (classifiers: serve probabilities by default),
# max_batch_size (merge concurrent requests), threads, environment_variables, secrets, resources.
"""

README = """# {name}

A Shipyard model package made by `shipyard init --format {format}`: {about}.

| file | what it is |
|---|---|
{files}

## Next steps

```bash
shipyard test {folder}      # send every request in examples.yaml and compare the answers
shipyard serve {folder}     # serve it: REST on :8080, gRPC on :8081
curl -s localhost:8080/v2/models/{name}/infer -d @request.json
```

where `request.json` is an Open Inference Protocol (V2) request, e.g.

```json
{request}
```

{retrain}
"""

FILE_ROLES = {
    CONFIG_FILE: "how Shipyard serves the model: its name, format, artifact and signature (every key is commented)",
    "examples.yaml": "requests with the outputs the model answers them with; `shipyard test` checks them",
    REQUIREMENTS_FILE: "the Python packages the model needs, pinned to the versions it was made with",
    "train.py": "trains the model and writes {artifact}; edit it and run `python train.py` to retrain",
    "model.py": "the model's code: load() once, predict() per request",
    "data/weights.json": "the model's parameters, read by model.py",
}


def init(directory: str | Path, fmt: str, *, name: str | None = None, force: bool = False) -> Path:
    """Write a working starting package for format ``fmt`` into ``directory`` and return its path."""
    skeleton = skeleton_for(fmt)
    target = check_target(Path(directory), force, flag="--force")
    model_name = check_name(name or target.name, "--name")
    with staging(target) as folder:
        for relative, text in skeleton.files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text)
        if "train.py" in skeleton.files:
            _train(folder / "train.py")
        config: dict[str, Any] = {"name": model_name, "version": "1", "format": skeleton.format}
        if skeleton.artifact:
            config["artifact"] = skeleton.artifact
        config.update(skeleton.config)
        write_config(folder, config)
        sample = Sample.of(skeleton.sample, columns=skeleton.columns)
        with loaded(folder) as model:
            tensors = sample.bind(model.inputs)
            config.update(signature(model, tensors, infer(model, tensors, output_names(model)), sample.columns))
        write_config(folder, config)
        with loaded(folder) as model:
            found = examples(model, sample, sample.rows)
        write_examples(folder, found, "shipyard init")
        pins, _ = format_requirements(skeleton.format, skeleton.modules)
        (folder / REQUIREMENTS_FILE).write_text("".join(f"{line}\n" for line in pins))
        (folder / CONFIG_FILE).write_text(config_text(config))
        read_config(folder)  # the commented file says the same as what was probed
        (folder / "README.md").write_text(readme(skeleton, config, str(directory), found[0]))
        return publish(folder, target)


def skeleton_for(fmt: str) -> Skeleton:
    """The skeleton of a format; PackageError for an unknown format or a library that is not installed."""
    try:
        canonical = normalise_format(fmt)
    except ValueError:
        canonical = ""
    if canonical not in SKELETONS:
        raise PackageError(f"--format: unknown format '{fmt}'; expected one of: {', '.join(FORMATS)}")
    skeleton = SKELETONS[canonical]
    missing = [module for module in skeleton.needs if importlib.util.find_spec(module) is None]
    if missing:
        raise PackageError(f"a {fmt} package needs the Python package(s) {', '.join(missing)}, which are not "
                           f"installed: pip install 'shipyard[{skeleton.extra}]'")
    return skeleton


def _train(script: Path) -> None:
    """Run train.py as ``python train.py`` would (in this process: the libraries are imported once)."""
    try:  # its "wrote ..." line and libraries' progress bars are not news to the init user
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    except Exception as exc:
        raise PackageError(f"train.py failed: {first_line(exc)}") from exc


def config_text(config: dict[str, Any]) -> str:
    """shipyard.yaml with a comment above each key."""
    out = ["# shipyard.yaml: how Shipyard serves this package. Every key is optional except what the model needs.\n"]
    for line in yaml_text(config).splitlines(keepends=True):
        key = line.split(":", 1)[0] if line[:1].isalpha() else None
        if key in KEY_COMMENTS and KEY_COMMENTS[key]:
            out.append(f"\n# {KEY_COMMENTS[key]}\n")
        out.append(line)
    out.append(CONFIG_FOOTER)
    return "".join(out)


def readme(skeleton: Skeleton, config: dict[str, Any], folder: str, example: dict[str, Any]) -> str:
    """The package's README: its files and the commands to try it."""
    files = {CONFIG_FILE: FILE_ROLES[CONFIG_FILE], **{path: FILE_ROLES.get(path, "") for path in skeleton.files},
             "examples.yaml": FILE_ROLES["examples.yaml"], REQUIREMENTS_FILE: FILE_ROLES[REQUIREMENTS_FILE]}
    if skeleton.artifact:
        files[skeleton.artifact] = "the trained model (written by train.py)"
    rows = "\n".join(f"| `{path}` | {role.format(artifact=skeleton.artifact)} |" for path, role in files.items())
    datatypes = {spec["name"]: spec["datatype"] for spec in config["inputs"]}
    request = {"inputs": [{"name": key, "shape": list(np.shape(value)), "datatype": datatypes[key],
                           "data": np.ravel(np.array(value, dtype=object)).tolist()}
                          for key, value in example["inputs"].items()]}
    retrain = ("After retraining, the expected outputs in examples.yaml may no longer hold: `shipyard test` shows "
               "which, and you update them." if "train.py" in skeleton.files else
               "Edit model.py and data/, then run `shipyard test` again.")
    name = config["name"]
    return README.format(name=name, format="custom" if skeleton.format == "python" else skeleton.format,
                         about=skeleton.about, files=rows, folder=folder, request=json.dumps(request),
                         retrain=retrain)
