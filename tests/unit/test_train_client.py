"""The SDK's TrainJob documents, status reading and fine-tuning config, without a control plane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.control.validation import ValidationError, validate
from shipyard.train.builtin.finetune import main as finetune_main
from shipyard.train.builtin.finetune import read_texts
from shipyard.train.client import job_of, resource_limits, runtime_of, status_of, trainjob_document, write_script
from shipyard.train.runtimes import builtin_runtimes, resolve
from shipyard.train.types import (BuiltinTrainer, CommandTrainer, CustomTrainer, FineTuneConfig, Initializer,
                                  LoraConfig)


def add(a, b, out):
    from pathlib import Path

    Path(out).write_text(str(a + b))


def test_custom_trainer_script_runs_the_function_with_its_arguments(tmp_path: Path):
    document = trainjob_document("sum", "python", CustomTrainer(add, {"a": 2, "b": 40, "out": str(tmp_path / "o")}),
                                 home=tmp_path / "home")
    command = document["spec"]["trainer"]["command"]
    assert command[0] == "python" and Path(command[1]).parent == tmp_path / "home" / "train" / "scripts"
    subprocess.run([sys.executable, command[1]], check=True, cwd=tmp_path)
    assert (tmp_path / "o").read_text() == "42"


def test_documents_validate_and_resolve_against_the_builtin_runtime(tmp_path: Path):
    trainer = CustomTrainer(add, {"a": 1, "b": 2, "out": "x"}, num_nodes=2,
                            resources_per_node={"cpu": 1, "memory": "1Gi"}, packages_to_install=["numpy"], env={"EPOCHS": 3})
    document = trainjob_document("job-a", "python", trainer, Initializer(dataset=str(tmp_path), model="hf://org/m"),
                                 home=tmp_path)
    validate(document)  # the CRD schema and Shipyard's own checks
    runtime = next(r for r in builtin_runtimes() if r["metadata"]["name"] == "python")
    resolved = resolve({**document, "metadata": {**document["metadata"], "namespace": "default", "uid": "u"}},
                       runtime, tmp_path)
    assert (resolved.num_nodes, resolved.env["EPOCHS"], resolved.resources_per_node["cpu"]) == (2, "3", 1.0)
    assert json.loads(document["metadata"]["annotations"]["trainer.shipyard.io/packages"]) == ["numpy"]
    assert document["spec"]["initializer"] == {"dataset": {"storageUri": str(tmp_path)},
                                               "model": {"storageUri": "hf://org/m"}}


def test_builtin_trainer_runs_finetune_on_torch_with_its_config(tmp_path: Path):
    config = FineTuneConfig(epochs=2, peft_config=LoraConfig(lora_rank=4), num_nodes=2)
    document = trainjob_document("tune", None, BuiltinTrainer(config), home=tmp_path, num_proc_per_node=1)
    trainer = document["spec"]["trainer"]
    assert document["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert trainer["command"][1].endswith("train/builtin/finetune.py") and trainer["numNodes"] == 2
    assert FineTuneConfig.from_json(trainer["args"][1]) == FineTuneConfig(epochs=2, peft_config=LoraConfig(lora_rank=4))
    validate(document)


def test_command_trainer_keeps_command_and_args():
    document = trainjob_document("cmd", "torch-distributed", CommandTrainer(["torchrun", "train.py"], ["--lr", 0.1]))
    assert document["spec"]["trainer"] == {"command": ["torchrun", "train.py"], "args": ["--lr", "0.1"]}


@pytest.mark.parametrize("trainer, message", [
    (CustomTrainer(lambda: None), "defined with def"),
    (CustomTrainer(add, {"a": object()}), "func_args must be JSON"),
    (CommandTrainer([]), "CommandTrainer.command"),
    (CommandTrainer(["python", "t.py"], num_nodes=0), "num_nodes must be a positive integer"),
    (CommandTrainer(["python", "t.py"], resources_per_node={"tpu": 1}), "unknown resource 'tpu'"),
    ("python train.py", "trainer must be a CustomTrainer"),
])
def test_bad_trainers_are_refused_by_name(tmp_path: Path, trainer, message):
    with pytest.raises(ValueError, match=message):
        trainjob_document("bad", "python", trainer, home=tmp_path)


def test_reserved_env_is_refused_by_the_plane_validation(tmp_path: Path):
    trainer = CommandTrainer(["python", "t.py"], env={"PET_NNODES": "4"})
    document = trainjob_document("bad", "torch-distributed", trainer)
    with pytest.raises(ValidationError) as raised:
        validate(document)
    assert any(error.path.startswith("spec.trainer.env") and "PET_NNODES" in str(error)
               for error in raised.value.errors), raised.value.errors


def test_resource_limits_name_gpus_as_kubernetes_does():
    assert resource_limits({"cpu": 2, "memory": "4Gi", "gpu": 1}) == {"cpu": "2", "memory": "4Gi",
                                                                       "nvidia.com/gpu": "1"}
    with pytest.raises(ValueError, match=r"resources_per_node\['cpu'\]"):
        resource_limits({"cpu": None})


def test_scripts_are_written_once_by_content(tmp_path: Path):
    first, again, other = write_script("print(1)\n", tmp_path), write_script("print(1)\n", tmp_path), \
        write_script("print(2)\n", tmp_path)
    assert first == again != other
    assert sorted(path.name for path in first.parent.iterdir()) == sorted([first.name, other.name])  # no temp files


def _job(conditions: dict[str, str], **status) -> dict:
    return {"metadata": {"name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"runtimeRef": {"name": "python"}, "trainer": {"numNodes": 2}},
            "status": {"conditions": [{"type": k, "status": v} for k, v in conditions.items()], **status}}


@pytest.mark.parametrize("conditions, expected", [
    ({}, "Created"),
    ({"Created": "True", "Running": "True"}, "Running"),
    ({"Running": "False", "Suspended": "True"}, "Suspended"),
    ({"Running": "False", "Complete": "True"}, "Complete"),
    ({"Complete": "False", "Failed": "True"}, "Failed"),
])
def test_status_is_the_decisive_condition(conditions, expected):
    assert status_of(_job(conditions)) == expected


def test_job_reads_steps_progress_and_metrics():
    job = job_of(_job({"Running": "True"},
                      jobsStatus=[{"name": "node-0", "active": 1}, {"name": "node-1", "succeeded": 1}],
                      trainerStatus={"progressPercentage": 40, "metrics": [{"name": "loss", "value": "0.5"}]}))
    assert [(step.name, step.status) for step in job.steps] == [("node-0", "Running"), ("node-1", "Complete")]
    assert (job.progress, job.metrics, job.num_nodes, job.runtime) == (40.0, {"loss": "0.5"}, 2, "python")


def test_runtimes_show_their_framework():
    frameworks = {runtime_of(doc).name: runtime_of(doc).trainer.framework for doc in builtin_runtimes()}
    assert frameworks["torch-distributed"] == "torch" and frameworks["python"] == "python"


def test_finetune_config_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown fine-tuning setting.*epoch_count"):
        FineTuneConfig.from_json(json.dumps({"epoch_count": 3}))


def test_finetune_dataset_errors_name_the_line(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl line 2: expected an object with string field\(s\) 'text'"):
        read_texts(data, FineTuneConfig())
    data.write_text('{"q": "a", "a": "b"}\n')
    assert read_texts(data, FineTuneConfig(prompt_field="q", response_field="a")) == ["a b"]
    with pytest.raises(ValueError, match="no JSONL file"):
        read_texts(tmp_path / "missing", FineTuneConfig())


def test_finetune_exits_2_on_a_bad_config_or_a_missing_model(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SHIPYARD_JOB_DIR", str(tmp_path))
    assert finetune_main(["--config", '{"epochs": "x", "nope": 1}']) == 2
    assert "--config: unknown fine-tuning setting(s): nope" in capsys.readouterr().err
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "train.jsonl").write_text('{"text": "hello"}\n')
    assert finetune_main(["--config", "{}"]) == 2
    assert f"no transformers model (config.json) in {tmp_path / 'model'}" in capsys.readouterr().err
