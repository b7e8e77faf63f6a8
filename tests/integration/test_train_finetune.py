"""The built-in LoRA fine-tuning trainer as a TrainJob on CPU, then ``shipyard package --from-job`` and serving.

The model is a tiny GPT-2 made here from a config (no download); the dataset a tiny JSONL file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from planeproc import PlaneProcess
from serverproc import ServerProcess
from tiny_lm import save_dataset, save_tiny_lm

pytestmark = pytest.mark.integration
pytest.importorskip("peft")
pytest.importorskip("transformers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_lora_job_completes_and_its_package_serves(tmp_path: Path):
    import torch
    from safetensors.torch import load_file

    from shipyard.train.client import TrainerClient
    from shipyard.train.types import BuiltinTrainer, FineTuneConfig, Initializer, LoraConfig

    model, data = save_tiny_lm(tmp_path / "base"), save_dataset(tmp_path / "data" / "train.jsonl").parent
    home = tmp_path / "home"
    plane = PlaneProcess(home).wait_up()
    try:
        with TrainerClient(url=plane.api, home=home) as client:
            config = FineTuneConfig(epochs=2, batch_size=4, learning_rate=5e-3, peft_config=LoraConfig(lora_rank=4))
            name = client.train(initializer=Initializer(dataset=str(data), model=str(model)),
                                trainer=BuiltinTrainer(config))
            job = client.wait_for_job_status(name, timeout=240)
            logs = list(client.get_job_logs(name))
            assert job.runtime == "torch-distributed" and job.progress == 100.0, logs
            assert "loss" in job.metrics and any("step 8/8" in line for line in logs), logs
            workdir = home / "jobs" / "default" / name
            assert sorted(path.name for path in (workdir / "checkpoints").iterdir()) == [
                "checkpoint-00000004.pt", "checkpoint-00000008.pt"]
            assert (workdir / "output" / "config.json").is_file()
            # the merged model is a plain transformers model, and training changed the attention weights
            config_json = json.loads((workdir / "output" / "config.json").read_text())
            assert config_json["architectures"] == ["GPT2LMHeadModel"]
            tuned, base = (load_file(folder / "model.safetensors") for folder in (workdir / "output", model))
            assert set(tuned) == set(base)
            attention = "transformer.h.0.attn.c_attn.weight"
            assert not torch.equal(tuned[attention], base[attention])
            assert torch.equal(tuned["transformer.wte.weight"], base["transformer.wte.weight"])  # not a LoRA target
    finally:
        plane.stop()

    env = {**os.environ, **OFFLINE, "SHIPYARD_HOME": str(home)}
    packaged = subprocess.run([sys.executable, "-m", "shipyard", "package", "--from-job", name, "tuned"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    assert "format: huggingface" in (tmp_path / "tuned" / "shipyard.yaml").read_text()
    server = ServerProcess(tmp_path / "tuned", env=OFFLINE)
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/v2/models/tuned/infer", timeout=60, json={"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the ship sails"]}]})
        assert response.status_code == 200, response.text
        generated = json.loads(response.json()["outputs"][0]["data"][0])[0]["generated_text"]
        assert generated.startswith("the ship sails"), generated  # the prompt, then what the model adds
    finally:
        server.stop()
