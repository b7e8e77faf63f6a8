"""The SDK's value types, in the shape of Kubeflow's ``kubeflow.trainer`` types.

Trainers say what a TrainJob runs (a function, a command, the built-in fine-tuning), an
Initializer what it downloads first; Runtime, TrainJob and Step are what the client reads back.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class CustomTrainer:
    """Run a Python function in every training process, as Kubeflow's CustomTrainer does.

    The function's source is written into the job as a script followed by ``func(**func_args)``,
    so it must be self-contained: imports inside the function, no closures over local variables.
    """

    func: Callable[..., Any]
    func_args: dict[str, Any] | None = None
    num_nodes: int | None = None
    resources_per_node: dict[str, Any] | None = None
    packages_to_install: list[str] | None = None
    env: dict[str, str] | None = None

    def script(self) -> str:
        """The script every process runs: the function's source, then the call with ``func_args``."""
        if not callable(self.func) or getattr(self.func, "__name__", "<lambda>") == "<lambda>":
            raise ValueError("CustomTrainer.func must be a function defined with def (a lambda has no usable source)")
        try:
            source = textwrap.dedent(inspect.getsource(self.func))
        except (OSError, TypeError) as exc:
            raise ValueError(f"CustomTrainer.func: cannot read the source of {self.func!r}: {exc}") from None
        try:
            args = json.dumps(self.func_args or {})
        except TypeError as exc:
            raise ValueError(f"CustomTrainer.func_args must be JSON values (numbers, strings, lists, dicts): "
                             f"{exc}") from None
        return (f"{source}\n\nif __name__ == \"__main__\":\n    import json\n"
                f"    {self.func.__name__}(**json.loads({args!r}))\n")


@dataclass
class CommandTrainer:
    """Run a script or module with arguments: ``CommandTrainer(["python", "train.py"], ["--epochs", "2"])``."""

    command: list[str]
    args: list[str] | None = None
    num_nodes: int | None = None
    resources_per_node: dict[str, Any] | None = None
    packages_to_install: list[str] | None = None
    env: dict[str, str] | None = None


@dataclass
class LoraConfig:
    """LoRA adapter settings (Kubeflow's LoraConfig names; ``lora_attn_modules`` are peft target modules)."""

    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_attn_modules: list[str] | None = None  # None: peft's defaults for the architecture


@dataclass
class FineTuneConfig:
    """The built-in fine-tuning trainer's settings (the role of Kubeflow's TorchTuneConfig).

    ``model`` and ``dataset`` default to what the job's initializers wrote (``<workdir>/model``,
    ``<workdir>/dataset``). The dataset is JSONL with a ``text`` field, or the fields named in
    ``prompt_field`` + ``response_field`` concatenated.
    """

    model: str | None = None
    dataset: str | None = None
    epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 1e-3
    max_length: int = 128
    text_field: str = "text"
    prompt_field: str | None = None
    response_field: str | None = None
    merge: bool = True  # save the merged model (servable as is); False: the adapter only
    seed: int = 0
    peft_config: LoraConfig = field(default_factory=LoraConfig)
    num_nodes: int | None = None
    resources_per_node: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The settings the fine-tuning script reads (``--config``); nodes and resources stay in the job."""
        values = asdict(self)
        values.pop("num_nodes")
        values.pop("resources_per_node")
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> "FineTuneConfig":
        """The settings back from ``to_json``; ValueError names an unknown field."""
        values = json.loads(text)
        lora = values.pop("peft_config", None) or {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values, peft_config=LoraConfig(**lora))


@dataclass
class BuiltinTrainer:
    """The built-in LoRA fine-tuning trainer (transformers + peft), run on the torch-distributed runtime."""

    config: FineTuneConfig = field(default_factory=FineTuneConfig)


Trainer = CustomTrainer | CommandTrainer | BuiltinTrainer


@dataclass
class Initializer:
    """What the job downloads into its workspace before training: storage URIs (path, file://, http(s)://,
    s3://, hf://) for ``<workdir>/dataset`` and ``<workdir>/model``."""

    dataset: str | None = None
    model: str | None = None


@dataclass
class RuntimeTrainer:
    """What a runtime runs: its framework and node layout."""

    framework: str
    num_nodes: int = 1
    num_proc_per_node: int | str = 1
    command: list[str] = field(default_factory=list)


@dataclass
class Runtime:
    """A (Cluster)TrainingRuntime as the SDK shows it."""

    name: str
    trainer: RuntimeTrainer
    kind: str = "ClusterTrainingRuntime"
    namespace: str | None = None


@dataclass
class Step:
    """One step of a job: ``dataset-initializer``, ``model-initializer``, ``node-0``, ..."""

    name: str
    status: str | None
    exit_code: int | None = None


@dataclass
class TrainJob:
    """A TrainJob as the SDK shows it; ``status`` is Created, Running, Complete, Failed or Suspended."""

    name: str
    runtime: str
    steps: list[Step]
    num_nodes: int
    creation_timestamp: str | None
    status: str
    progress: float | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict, repr=False)  # the TrainJob document with status
