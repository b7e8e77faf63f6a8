"""Resolving TrainJobs against runtimes, ports, and the in-job helpers (report, checkpoints)."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shipyard import train
from shipyard.train.ports import free_ports
from shipyard.train.runtimes import TrainSpecError, builtin_runtime, builtin_runtimes, parse_quantity, resolve
from shipyard.train.spec import reserved_env

CRDS = Path("/work/shared/crds")


def job(trainer: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "j", "namespace": "team", "uid": "u1", "annotations": annotations or {}},
            "spec": {"runtimeRef": {"name": "torch-distributed"},
                     "trainer": trainer if trainer is not None else {"command": ["torchrun", "train.py"]}}}


def test_builtin_runtimes_have_kubeflows_shape() -> None:
    names = [doc["metadata"]["name"] for doc in builtin_runtimes()]
    assert names[:3] == ["torch-distributed", "jax-distributed", "xgboost-distributed"] and "python" in names
    assert ("deepspeed-distributed" in names) == ("deepspeed" in sys.modules or _importable("deepspeed"))
    crd = CRDS / "trainer.kubeflow.org_clustertrainingruntimes.yaml"
    if not crd.exists():
        pytest.skip("the Kubeflow CRDs are not beside the project")
    schema = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for document in builtin_runtimes():
        jsonschema.validate(document, schema)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_resolve_applies_the_trainer_overrides(tmp_path: Path) -> None:
    warnings: list[str] = []
    resolved = resolve(job({"image": "pytorch/pytorch:latest", "command": ["torchrun", "train.py"], "args": ["--epochs", "2"],
                            "env": [{"name": "LR", "value": "0.1"}], "numNodes": 2, "numProcPerNode": 3,
                            "resourcesPerNode": {"limits": {"cpu": "1500m", "memory": "2Gi", "nvidia.com/gpu": 1},
                                                 "requests": {"cpu": 1}}},
                           {"trainer.shipyard.io/max-restarts": "2", "trainer.shipyard.io/elastic": "1:3"}),
                       builtin_runtime("torch-distributed"), tmp_path, warnings)
    assert resolved.framework == "torch" and resolved.num_nodes == 2 and resolved.nproc_per_node == 3
    assert resolved.command == ["torchrun", "train.py", "--epochs", "2"] and resolved.env == {"LR": "0.1"}
    assert resolved.resources_per_node == {"cpu": 1.0, "memory": 2.0 * 2**30, "gpu": 1.0}  # requests win
    assert resolved.max_restarts == 2 and resolved.elastic == (1, 3) and resolved.attempt == 0
    assert resolved.workdir == tmp_path / "jobs" / "team" / "j" and resolved.python == sys.executable
    assert resolved.checkpoint_dir == resolved.workdir / "checkpoints"
    assert len(warnings) == 1 and "spec.trainer.image" in warnings[0]


def test_resolve_defaults_from_the_runtime(tmp_path: Path) -> None:
    runtime = builtin_runtime("python")
    runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] = 4
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    node["containers"][0].update(command=["python", "run.py"], env=[{"name": "A", "value": "1"}])
    resolved = resolve(job({}), runtime, tmp_path)
    assert resolved.framework == "python" and resolved.command == ["python", "run.py"] and resolved.env == {"A": "1"}
    assert resolved.max_restarts == 4 and resolved.num_nodes == 1
    assert resolved.resources_per_node == {"cpu": 1.0, "memory": 0.0, "gpu": 0.0}


@pytest.mark.parametrize("trainer, annotations, path", [
    ({"command": ["python", "t.py"], "numNodes": 0}, {}, "spec.trainer.numNodes"),
    ({"command": ["python", "t.py"], "numProcPerNode": "two"}, {}, "spec.trainer.numProcPerNode"),
    ({}, {}, "spec.trainer.command"),
    ({"command": ["torchrun", "--nnodes=2", "t.py"]}, {}, "spec.trainer.command"),
    ({"command": ["python", "t.py"], "env": [{"name": "PET_NNODES", "value": "3"}]}, {}, "spec.trainer.env[0].name"),
    ({"command": ["python", "t.py"], "resourcesPerNode": {"limits": {"memory": "lots"}}}, {},
     "spec.trainer.resourcesPerNode.limits.memory"),
    ({"command": ["python", "t.py"]}, {"trainer.shipyard.io/max-restarts": "-1"},
     "metadata.annotations[trainer.shipyard.io/max-restarts]"),
    ({"command": ["python", "t.py"]}, {"trainer.shipyard.io/elastic": "3:2"},
     "metadata.annotations[trainer.shipyard.io/elastic]"),
    ({"command": ["python", "t.py"]}, {"trainer.shipyard.io/packages": "numpy"},
     "metadata.annotations[trainer.shipyard.io/packages]"),
])
def test_resolve_names_the_bad_field(tmp_path: Path, trainer: dict[str, Any], annotations: dict[str, str],
                                     path: str) -> None:
    with pytest.raises(TrainSpecError) as error:
        resolve(job(trainer, annotations), builtin_runtime("torch-distributed"), tmp_path)
    assert error.value.path == path and str(error.value).startswith(path + ": ")


def test_mpi_runtime_is_not_supported(tmp_path: Path) -> None:
    runtime = builtin_runtime("python")
    runtime["metadata"] = {"name": "mlx", "labels": {"trainer.kubeflow.org/framework": "mlx"}}
    runtime["spec"]["mlPolicy"]["mpi"] = {"numProcPerNode": 1}
    with pytest.raises(TrainSpecError, match="TrainingRuntimeNotSupported"):
        resolve(job(), runtime, tmp_path)


def test_quantities_and_reserved_names() -> None:
    assert parse_quantity("500m", "x") == 0.5 and parse_quantity("1Ki", "x") == 1024 and parse_quantity(2, "x") == 2
    with pytest.raises(TrainSpecError, match="^x: expected a quantity"):
        parse_quantity("2 cores", "x")
    assert reserved_env("PET_MASTER_PORT") and reserved_env("JAX_PROCESS_ID") and reserved_env("DMLC_TASK_ID")
    assert not reserved_env("JAX_PLATFORMS") and not reserved_env("LR")


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(0 < port < 65536 for port in ports)


def test_report_appends_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report_file = tmp_path / ".shipyard" / "report.jsonl"
    monkeypatch.setenv("SHIPYARD_REPORT_FILE", str(report_file))
    monkeypatch.setenv("RANK", "0")
    assert train.report({"loss": 0.5, "acc": 1}, step=3, progress=30)
    assert train.report(progress=60.0)
    monkeypatch.setenv("RANK", "1")
    assert not train.report({"loss": 0.1}, step=4)
    lines = [json.loads(line) for line in report_file.read_text().splitlines()]
    assert [(line["step"], line["progress"], line["metrics"]) for line in lines] == [
        (3, 30.0, {"loss": 0.5, "acc": 1}), (None, 60.0, {})]
    assert all(isinstance(line["time"], float) for line in lines)


@pytest.mark.parametrize("kwargs, field", [
    ({"progress": 101}, "progress"), ({"step": -1}, "step"), ({"metrics": {"loss": "low"}}, "metrics['loss']"),
    ({"metrics": {"loss": float("nan")}}, "metrics['loss']"),
])
def test_report_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        train.report(**kwargs)


def test_checkpoints_keep_the_last_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("RANK", "0")
    assert train.latest_checkpoint() is None and train.load_checkpoint() is None
    for step in range(5):
        train.save_checkpoint({"step": step}, step=step, keep=2)
    names = sorted(path.name for path in (tmp_path / "ckpt").iterdir())
    suffix = ".pt" if "torch" in sys.modules else ".pkl"
    assert names == [f"checkpoint-00000003{suffix}", f"checkpoint-00000004{suffix}"]  # no temp files left
    assert train.checkpoint_step(train.latest_checkpoint()) == 4
    assert train.load_checkpoint() == {"step": 4}
    raw = train.save_checkpoint(b"\x00raw", step=7)
    assert raw.suffix == ".bin" and train.load_checkpoint() == b"\x00raw"
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"w")
    copied = train.save_checkpoint(weights, step=8)
    assert copied.name == "checkpoint-00000008.safetensors" and train.load_checkpoint() == copied
    monkeypatch.setenv("RANK", "1")
    assert train.save_checkpoint({"x": 1}, step=9) is None  # rank 0 writes checkpoints
    with pytest.raises(ValueError, match="^keep:"):
        train.save_checkpoint({}, step=1, keep=0)


def test_pickle_checkpoint_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    path = train.save_checkpoint({"a": [1, 2]}, step=1)
    assert path.suffix == ".pkl" and pickle.loads(path.read_bytes()) == {"a": [1, 2]}


def test_rank_and_world_size_from_framework_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    assert (train.rank(), train.world_size()) == (2, 4)
