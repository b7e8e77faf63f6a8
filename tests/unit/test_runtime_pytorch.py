"""The PyTorch runtime: TorchScript, torch.export and eager model.py models give what torch itself gives."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes import ModelSource, create_model
from shipyard.runtimes.pytorch import PyTorchModel, to_array, to_tensor

# TorchScript is deprecated in favour of torch.export, but it is still what many models ship as
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class TwoHeads(torch.nn.Module):
    """Two inputs, a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, offset: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(features) + offset
        return logits, logits.argmax(dim=1)


class Named(torch.nn.Module):
    """A dict of outputs."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"double": x * 2, "total": x.sum(dim=1)}


class Half(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 3).to(torch.bfloat16)


TWO_HEADS_SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]},
               {"name": "offset", "datatype": "FP32", "shape": [3]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "label", "datatype": "INT64", "shape": [-1]}],
}

EAGER_MODEL = '''
    import asyncio
    import torch

    class Model:
        def __init__(self, config):
            self.factor = float(config.get("factor", 1))

        def load(self):
            self.net = torch.nn.Linear(2, 1)

        async def preprocess(self, inputs):
            await asyncio.sleep(0)
            self.preprocess_mode = torch.is_inference_mode_enabled()
            return torch.from_numpy(inputs["input-0"]).float()

        def predict(self, x):
            return {"y": self.net(x) * self.factor,
                    "modes": torch.tensor([self.preprocess_mode, torch.is_inference_mode_enabled()]),
                    "threads": torch.tensor(torch.get_num_threads())}
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("torch")
    paths = {name: root / f"{name}.pt" for name in ["two_heads", "named", "traced", "half", "state_dict"]}
    torch.jit.script(TwoHeads().eval()).save(str(paths["two_heads"]))
    torch.jit.script(Named()).save(str(paths["named"]))
    torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4)).save(str(paths["traced"]))
    torch.jit.script(Half()).save(str(paths["half"]))
    torch.save(TwoHeads().state_dict(), paths["state_dict"])
    batch = torch.export.Dim("batch")
    program = torch.export.export(TwoHeads().eval(), (torch.randn(5, 4), torch.randn(3)),
                                  dynamic_shapes={"features": {0: batch}, "offset": None})
    paths["exported"] = root / "two_heads.pt2"
    torch.export.save(program, str(paths["exported"]))
    paths["eager"] = root / "eager"
    paths["eager"].mkdir()
    (paths["eager"] / "model.py").write_text(textwrap.dedent(EAGER_MODEL))
    return paths


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(path: Path, name: str = "m", **config) -> PyTorchModel:
    model = create_model(ModelSource(name, "pytorch", path, options={"config": config} if config else {}))
    assert isinstance(model, PyTorchModel)
    model.load()
    return model


def infer(model, inputs: dict, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    return asyncio.run(model.infer(inputs, outputs, {}))


def run_torch(path: Path, *arrays: np.ndarray):
    module = torch.export.load(str(path)).module() if path.suffix == ".pt2" else torch.jit.load(str(path))
    with torch.inference_mode():
        return module(*(torch.from_numpy(a) for a in arrays))


def features(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)


OFFSET = np.array([0.5, -0.5, 0.0], np.float32)


def test_torchscript_signature_comes_from_the_package_config(files):
    model = load(files["two_heads"], **TWO_HEADS_SIGNATURE)
    meta = model.metadata()
    assert meta["platform"] == "pytorch" and model.kind == "torchscript"
    assert meta["inputs"] == TWO_HEADS_SIGNATURE["inputs"] and meta["outputs"] == TWO_HEADS_SIGNATURE["outputs"]
    assert model.default_outputs == ["logits", "label"]


@pytest.mark.parametrize("rows", [1, 6])
def test_torchscript_inputs_are_positional_and_tuple_outputs_take_declared_names(files, rows):
    model = load(files["two_heads"], **TWO_HEADS_SIGNATURE)
    got = infer(model, {"offset": OFFSET, "features": features(rows)})
    logits, label = run_torch(files["two_heads"], features(rows), OFFSET)
    np.testing.assert_allclose(got["logits"], logits.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got["label"], label.numpy())
    assert got["label"].dtype == np.int64
    assert list(infer(model, {"offset": OFFSET, "features": features(rows)}, ["label"])) == ["label"]


def test_outputs_are_probed_when_only_inputs_are_declared(files):
    model = load(files["two_heads"], inputs=TWO_HEADS_SIGNATURE["inputs"])
    assert [spec.to_dict() for spec in model.outputs] == [
        {"name": "output-0", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "output-1", "datatype": "INT64", "shape": [-1]},
    ]
    named = load(files["named"], inputs=[{"name": "x", "datatype": "FP64", "shape": [-1, 2]}])
    assert [spec.to_dict() for spec in named.outputs] == [
        {"name": "double", "datatype": "FP64", "shape": [-1, 2]},
        {"name": "total", "datatype": "FP64", "shape": [-1]},
    ]
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    got = infer(named, {"x": x})
    np.testing.assert_array_equal(got["double"], x * 2)
    np.testing.assert_array_equal(got["total"], [3.0, 7.0])


def test_undeclared_torchscript_takes_input_0_of_any_shape(files):
    model = load(files["traced"])
    assert [spec.to_dict() for spec in model.inputs] == [{"name": "input-0", "datatype": "FP32", "shape": [-1]}]
    assert [spec.to_dict() for spec in model.outputs] == [{"name": "output-0", "datatype": "FP32", "shape": [-1]}]
    rows = features(3).astype(np.float64)  # a JSON request carries FP64; the model gets FP32
    got = infer(model, {"instances": rows})
    np.testing.assert_allclose(got["output-0"], run_torch(files["traced"], rows.astype(np.float32)).numpy())
    several = load(files["two_heads"])  # undeclared: every returned output is served, by position
    with pytest.raises(ModelFailed, match="model 'm' raised"):  # one input given, two needed
        infer(several, {"input-0": features(2)})
    with pytest.raises(InvalidInput, match="produced no output 'nope'; it returned: output-0"):
        infer(model, {"input-0": rows}, ["nope"])


def test_dict_outputs_become_named_outputs_without_config(files):
    got = infer(load(files["named"]), {"x": np.ones((2, 3), np.float32)})
    assert list(got) == ["double", "total"]
    np.testing.assert_array_equal(got["total"], [3, 3])


def test_declared_outputs_must_match_what_the_model_returns(files):
    config = {**TWO_HEADS_SIGNATURE, "outputs": TWO_HEADS_SIGNATURE["outputs"][:1]}
    with pytest.raises(ModelFailed, match="returned 2 output.*declares 1: logits"):
        infer(load(files["two_heads"], **config), {"features": features(1), "offset": OFFSET})


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"features": np.ones((2, 5), np.float32), "offset": OFFSET}, r"input 'features': expected shape \[-1, 4\]"),
        ({"features": features(2)}, "missing input 'offset'"),
        ({"features": features(2), "offset": np.array([b"a", b"b", b"c"], dtype=object)},
         "input 'offset': expected FP32, got BYTES"),
        ({"features": features(2), "offset": np.ones(4, np.float32)}, r"input 'offset': expected shape \[3\]"),
    ],
)
def test_bad_inputs_raise_invalid_input_naming_the_input(files, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        infer(load(files["two_heads"], **TWO_HEADS_SIGNATURE), inputs)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"inputs": [{"name": "x", "datatype": "FP32"}]}, "'inputs', item 0 must be a mapping with name, datatype"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "datatype 'FLOAT' is not one of"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "[1]"}]}, "shape must be a list of sizes"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}]}, "input 'x' as BYTES"),
        ({"outputs": []}, "'outputs' must be a non-empty list"),
        ({"threads": 0}, "'threads' must be a positive integer, got 0"),
    ],
)
def test_bad_package_config_is_a_clear_load_error(files, config, message):
    with pytest.raises(ValueError, match=message):
        load(files["traced"], "cfg", **config)


def test_export_signature_comes_from_the_program(files):
    model = load(files["exported"])
    assert model.kind == "export"
    assert [spec.to_dict() for spec in model.inputs] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "offset", "datatype": "FP32", "shape": [3]},
    ]
    assert [spec.to_dict() for spec in model.outputs] == [
        {"name": "output-0", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "output-1", "datatype": "INT64", "shape": [-1]},
    ]


@pytest.mark.parametrize("rows", [1, 9])
def test_export_runs_any_batch_like_torch(files, rows):
    got = infer(load(files["exported"]), {"features": features(rows), "offset": OFFSET})
    logits, label = run_torch(files["exported"], features(rows), OFFSET)
    np.testing.assert_allclose(got["output-0"], logits.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got["output-1"], label.numpy())


def test_export_guard_failures_are_invalid_input(tmp_path):
    class Pair(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    batch = torch.export.Dim("batch")
    program = torch.export.export(Pair(), (torch.ones(3, 2), torch.ones(3, 2)),
                                  dynamic_shapes={"a": {0: batch}, "b": {0: batch}})
    torch.export.save(program, str(tmp_path / "pair.pt2"))
    model = load(tmp_path / "pair.pt2")
    np.testing.assert_array_equal(infer(model, {"a": np.ones((4, 2)), "b": np.ones((4, 2))})["output-0"],
                                  np.full((4, 2), 2.0))
    with pytest.raises(InvalidInput, match="rejected the inputs: Guard failed"):
        infer(model, {"a": np.ones((4, 2)), "b": np.ones((5, 2))})


def test_bfloat16_outputs_are_served_as_fp32(files):
    model = load(files["half"], inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}])
    assert model.outputs[0].datatype == "FP32"
    got = infer(model, {"x": np.array([1.0, 2.5], np.float32)})["output-0"]
    assert got.dtype == np.float32 and got.tolist() == [3.0, 7.5]


def test_eager_model_runs_in_inference_mode_with_the_thread_setting(files):
    model = load(files["eager"], "eager", format="pytorch", threads=1, factor=2)
    assert model.kind == "eager" and model.format == "pytorch"
    got = infer(model, {"input-0": np.array([[1.0, 2.0]])})
    assert got["modes"].tolist() == [True, True]  # async preprocess and sync predict
    assert got["threads"].item() == 1 and torch.get_num_threads() == 1
    net = model.instance.net
    with torch.inference_mode():
        expected = net(torch.tensor([[1.0, 2.0]])) * 2
    np.testing.assert_allclose(got["y"], expected.numpy())
    assert not torch.is_inference_mode_enabled()


def test_threads_setting_applies_to_file_models(files):
    load(files["traced"], threads=1)
    assert torch.get_num_threads() == 1


def test_numpy_and_torch_share_memory():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_tensor(torch, array)
    assert tensor.data_ptr() == array.ctypes.data
    back = to_array(torch, "out", tensor)
    assert back.ctypes.data == array.ctypes.data
    frozen = array.copy()
    frozen.flags.writeable = False  # e.g. decoded straight from a request buffer: copied, never written
    assert to_tensor(torch, frozen).data_ptr() != frozen.ctypes.data
    transposed = to_tensor(torch, array.T)
    assert transposed.is_contiguous() and transposed.tolist() == array.T.tolist()


def test_torch_save_checkpoint_is_explained(files):
    with pytest.raises(ValueError, match=r"state_dict\.pt was written by torch\.save.*torch\.jit\.script"):
        load(files["state_dict"])


def test_file_that_is_not_an_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(ValueError, match=r"junk\.pt is not a TorchScript or torch\.export archive"):
        load(path)


def test_missing_torch_names_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeError, match=r"pip install 'shipyard\[pytorch\]'"):
        load(files["traced"])
