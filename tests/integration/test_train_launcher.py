"""The training launcher with real processes: torch DDP, XGBoost and JAX jobs, resume, stop, adoption."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from shipyard.train.launcher import JobOutcome, JobRun
from shipyard.train.runtimes import builtin_runtime, resolve
from shipyard.train.spec import ResolvedJob

pytestmark = pytest.mark.integration
TIMEOUT_S = 150.0


def make_job(tmp_path: Path, name: str, runtime: str, script: str, **trainer: Any) -> ResolvedJob:
    """A job resolved from a TrainJob document, running ``script`` (written to tmp_path) with ``python``."""
    path = tmp_path / f"train_{name}.py"
    path.write_text(textwrap.dedent(script))
    document = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
                "spec": {"runtimeRef": {"name": runtime},
                         "trainer": {"command": ["python", str(path)], **trainer}}}
    return resolve(document, builtin_runtime(runtime), tmp_path / "home")


def wait(run: JobRun, timeout_s: float = TIMEOUT_S) -> JobOutcome:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = run.poll()
        if outcome is not None:
            return outcome
        time.sleep(0.1)
    run.terminate(grace_s=0)
    raise AssertionError(f"job did not finish within {timeout_s}s; logs: {logs(run)}")


def logs(run: JobRun) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(run.logs_dir.glob("*.log")))


def until(predicate: Any, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


TORCH_DDP = """
    import os, torch, torch.distributed as dist
    from shipyard import train
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different data per rank; DDP keeps the weights equal
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        x = torch.randn(16, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        train.report({"loss": loss.item()}, step=step, progress=100 * (step + 1) / 5)
    torch.save(model.module.state_dict(), os.path.join(os.environ["SHIPYARD_JOB_DIR"], f"weights-{rank}.pt"))
    print(f"rank {rank} of {dist.get_world_size()} done, PET_NODE_RANK={os.environ['PET_NODE_RANK']}", flush=True)
    dist.destroy_process_group()
"""


def test_torch_ddp_two_nodes_equal_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    job = make_job(tmp_path, "ddp", "torch-distributed", TORCH_DDP, numNodes=2, numProcPerNode=1)
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    outcome = wait(run)
    assert outcome.succeeded, logs(run)
    assert outcome.exit_codes == {"node-0": 0, "node-1": 0}
    first, second = (torch.load(job.workdir / f"weights-{r}.pt") for r in (0, 1))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert "rank 0 of 2 done" in logs(run) and "rank 1 of 2 done" in logs(run)
    assert (run.logs_dir / "node-0.log").exists() and (run.logs_dir / "node-1.log").exists()
    assert run.logs_dir == tmp_path / "home" / "logs" / "default" / "ddp"
    lines = job.report_file.read_text().splitlines()
    assert len(lines) == 5  # rank 0 only
    assert not run.pids()


XGBOOST = """
    import os, numpy as np, xgboost as xgb
    from xgboost import collective
    args = {"dmlc_tracker_uri": os.environ["DMLC_TRACKER_URI"], "dmlc_tracker_port": int(os.environ["DMLC_TRACKER_PORT"]),
            "dmlc_task_id": os.environ["DMLC_TASK_ID"]}
    with collective.CommunicatorContext(**args):
        rank, world = collective.get_rank(), collective.get_world_size()
        rng = np.random.default_rng(rank)
        x = rng.normal(size=(200, 3)); y = x @ np.array([1.0, -2.0, 0.5])
        booster = xgb.train({"tree_method": "hist", "max_depth": 3}, xgb.DMatrix(x, label=y), num_boost_round=5)
        booster.save_model(os.path.join(os.environ["SHIPYARD_JOB_DIR"], f"model-{rank}.json"))
        print(f"xgboost worker {rank} of {world} done", flush=True)
"""


def test_xgboost_two_workers(tmp_path: Path) -> None:
    pytest.importorskip("xgboost")
    job = make_job(tmp_path, "xgb", "xgboost-distributed", XGBOOST, numNodes=2)
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    outcome = wait(run)
    assert outcome.succeeded, logs(run)
    assert "xgboost worker 0 of 2 done" in logs(run) and "xgboost worker 1 of 2 done" in logs(run)
    # Distributed training: both workers built the same trees from the allreduced histograms.
    assert (job.workdir / "model-0.json").read_bytes() == (job.workdir / "model-1.json").read_bytes()
    assert (run.logs_dir / "tracker.log").exists()


JAX = """
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax, jax.numpy as jnp
    jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    from jax.experimental import multihost_utils
    total = multihost_utils.process_allgather(jnp.array([jax.process_index() + 1.0])).sum()
    print(f"jax process {jax.process_index()} of {jax.process_count()} sum {float(total)}", flush=True)
    jax.distributed.shutdown()
"""


def test_jax_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    job = make_job(tmp_path, "jax", "jax-distributed", JAX, numNodes=2)
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    outcome = wait(run)
    assert outcome.succeeded, logs(run)
    assert "jax process 0 of 2 sum 3.0" in logs(run) and "jax process 1 of 2 sum 3.0" in logs(run)


RESUMABLE = """
    import os, time
    from shipyard import train
    train.stop_requested()
    latest = train.latest_checkpoint()
    start = train.load_checkpoint()["next"] if latest else 0
    print(f"attempt {os.environ['SHIPYARD_ATTEMPT']} starts at step {start}", flush=True)
    for step in range(start, 12):
        with open(os.path.join(os.environ["SHIPYARD_JOB_DIR"], "done.txt"), "a") as done:
            done.write(f"{step}\\n")
        train.save_checkpoint({"next": step + 1}, step=step, keep=2)
        if train.stop_requested():
            print(f"stopping after step {step}", flush=True)
            raise SystemExit(0)
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.2")))
"""


def test_killed_run_resumes_from_latest_checkpoint(tmp_path: Path) -> None:
    job = make_job(tmp_path, "resume", "python", RESUMABLE)
    first = JobRun(job, home=tmp_path / "home")
    first.start()
    until(lambda: len(list(job.checkpoint_dir.glob("checkpoint-*"))) >= 2
          and (job.workdir / "done.txt").read_text().count("\n") >= 4)
    first.terminate(grace_s=0)  # SIGKILL: no chance to checkpoint
    killed = first.poll()
    assert killed is not None and not killed.succeeded and killed.reason == "Terminated"
    completed = (job.workdir / "done.txt").read_text().split()
    # keep=2; a SIGKILL between writing a checkpoint and pruning the oldest leaves one more (never fewer)
    assert len(list(job.checkpoint_dir.glob("checkpoint-*"))) in (2, 3)

    job.attempt = 1
    second = JobRun(job, home=tmp_path / "home")
    second.start()
    outcome = wait(second)
    assert outcome.succeeded, logs(second)
    steps = [int(s) for s in (job.workdir / "done.txt").read_text().split()]
    redone = len(steps) - 12
    assert sorted(set(steps)) == list(range(12))
    assert 0 <= redone < len(completed)  # resumed, not restarted from step 0
    log = (second.logs_dir / "node-0.log").read_text()
    assert "attempt 0 starts at step 0" in log and "attempt 1 starts at step 0" not in log


def test_terminate_lets_code_checkpoint(tmp_path: Path) -> None:
    job = make_job(tmp_path, "graceful", "python", RESUMABLE, env=[{"name": "STEP_SECONDS", "value": "1"}])
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    until(lambda: (job.workdir / "done.txt").exists())
    run.terminate(grace_s=60)
    outcome = run.poll()
    assert outcome is not None and outcome.reason == "Terminated"
    assert outcome.exit_codes == {"node-0": 0}  # the code saw SIGTERM and stopped cleanly
    assert "stopping after step" in (run.logs_dir / "node-0.log").read_text()


def test_failure_stops_the_other_processes(tmp_path: Path) -> None:
    script = """
        import os, sys, time
        if os.environ["RANK"] == "1":
            print("rank 1 fails", flush=True); sys.exit(3)
        time.sleep(120)
    """
    job = make_job(tmp_path, "fails", "python", script, numNodes=2)
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    outcome = wait(run)
    assert not outcome.succeeded and outcome.reason == "Error"
    assert outcome.exit_codes["node-1"] == 3
    assert "node-1 exited with code 3" in outcome.message
    assert not run.pids()


def test_adopt_after_the_launcher_is_gone(tmp_path: Path) -> None:
    script = """
        import os, time
        time.sleep(float(os.environ["SLEEP"]))
        print("slept", flush=True)
    """
    job = make_job(tmp_path, "adopt", "python", script, numNodes=2, env=[{"name": "SLEEP", "value": "2"}])
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    record = run.record()
    until(lambda: len(run.pids()) >= 4)  # two step wrappers and their two scripts
    adopted = JobRun.adopt(job, record)
    assert adopted is not None and sorted(adopted.pids()) == sorted(run.pids())
    other = ResolvedJob(**{**job.__dict__, "uid": "someone-else"})
    assert JobRun.adopt(other, record) is None  # tag mismatch: not ours
    outcome = wait(adopted)  # not our children: exit codes come from the exit files
    assert outcome.succeeded and outcome.exit_codes == {"node-0": 0, "node-1": 0}
    run.poll()  # reap
    assert JobRun.adopt(job, {**record, "processes": [
        {**entry, "exit_file": str(tmp_path / "missing")} for entry in record["processes"]]}) is None


def test_adopted_run_can_be_terminated(tmp_path: Path) -> None:
    job = make_job(tmp_path, "adopt-stop", "python", "import time\ntime.sleep(300)\n")
    run = JobRun(job, home=tmp_path / "home")
    run.start()
    until(lambda: len(run.pids()) >= 2)
    adopted = JobRun.adopt(job, run.record())
    assert adopted is not None
    adopted.terminate(grace_s=5)
    run.poll()
    assert not adopted.pids()
