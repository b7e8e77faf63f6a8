"""The resolved form of a TrainJob: what the launcher needs to start its processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FRAMEWORKS = ("torch", "jax", "xgboost", "deepspeed", "python")


@dataclass
class ResolvedJob:
    """A TrainJob merged with its runtime: one value the launcher can run without the control plane."""

    namespace: str
    name: str
    uid: str
    framework: str  # "torch" | "jax" | "xgboost" | "deepspeed" | "python"
    num_nodes: int  # "nodes" are process groups on this machine
    nproc_per_node: int
    command: list[str]  # the trainer's command + args, e.g. ["python", "train.py", "--epochs", "2"]
    env: dict[str, str]  # user env (reserved PET_*/JAX_*/DMLC_* names refused at validation)
    workdir: Path  # $SHIPYARD_HOME/jobs/<namespace>/<name>/ (checkpoints/ and .shipyard/ inside)
    python: str  # interpreter: sys.executable, or a venv's python built from packages_to_install
    resources_per_node: dict[str, float]  # {"cpu": cores, "memory": bytes, "gpu": count}
    max_restarts: int = 0
    elastic: tuple[int, int] | None = None  # torch --nnodes MIN:MAX
    attempt: int = 0  # restarts so far
    #: GPU ids per node assigned by the scheduler (CUDA_VISIBLE_DEVICES of node i's processes);
    #: None leaves the variable alone (a JobRun started outside the control plane).
    devices: list[list[str]] | None = None

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``save_checkpoint`` writes: ``<workdir>/checkpoints``."""
        return self.workdir / "checkpoints"

    @property
    def report_file(self) -> Path:
        """The rank-0 progress/metrics log: ``<workdir>/.shipyard/report.jsonl``."""
        return self.workdir / ".shipyard" / "report.jsonl"

    @property
    def world_size(self) -> int:
        """Total training processes: nodes x processes per node."""
        return self.num_nodes * self.nproc_per_node


def step_names(job: ResolvedJob) -> list[str]:
    """The trainer steps of ``job`` in Kubeflow's naming: ``node-0``, ``node-1``, ..."""
    return [f"node-{i}" for i in range(job.num_nodes)]


#: Variables the launcher sets in every training process; a TrainJob's env may not set them.
RESERVED_ENV = frozenset({
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
    "DMLC_TRACKER_URI", "DMLC_TRACKER_PORT", "DMLC_TASK_ID", "DMLC_NUM_WORKER",
    "SHIPYARD_JOB_DIR", "SHIPYARD_CHECKPOINT_DIR", "SHIPYARD_REPORT_FILE", "SHIPYARD_ATTEMPT", "SHIPYARD_TRAINJOB",
})


def reserved_env(name: str) -> bool:
    """Whether ``name`` is set by the launcher: every ``PET_*`` (torchrun's), plus :data:`RESERVED_ENV`."""
    return name.startswith("PET_") or name in RESERVED_ENV
