"""``shipyard train FILE.py``: the quick path from a training script to a TrainJob, with its logs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import typer

from shipyard.cli.errors import fail
from shipyard.cli.resources import api_errors, connect
from shipyard.control.resources import DEFAULT_NAMESPACE


def default_runtime() -> str:
    """torch-distributed (Kubeflow's default) where torch is installed, else plain python."""
    return "torch-distributed" if importlib.util.find_spec("torch") is not None else "python"


def train(
    script: Path = typer.Argument(..., metavar="FILE.py", show_default=False,
                                  help="The training script every process runs."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", min=1, show_default=False,
                                            help="Process groups (\"nodes\") to start (default: the runtime's, 1)."),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, show_default=False,
                                                 help="Processes per node (default: the runtime's, 1)."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", show_default=False,
        help="Training runtime: torch-distributed, jax-distributed, xgboost-distributed, python or a stored one "
        "(default: torch-distributed where torch is installed, else python)."),
    args: list[str] = typer.Option([], "--arg", "-a", show_default=False,
                                   help="An argument for the script; repeat for several (--arg --epochs --arg 2)."),
    env: list[str] = typer.Option([], "--env", "-e", show_default=False,
                                  help="KEY=VALUE set in every process; repeat for several."),
    name: Optional[str] = typer.Option(None, "--name", show_default=False, help="Job name (default: random)."),
    namespace: str = typer.Option(DEFAULT_NAMESPACE, "--namespace", "-n", help="Namespace."),
    follow: bool = typer.Option(True, "--follow/--no-follow",
                                help="Stream node-0's log until the job ends; the exit code is the job's result."),
) -> None:
    """Run a training script as a TrainJob on this machine and stream its log.

    Starts the control plane if none runs.

    The job outlives this command: Ctrl-C stops following, not the job.

    [b]Examples[/b]

      shipyard train train.py

      shipyard train train.py --num-nodes 2 --nproc-per-node 2 --arg --epochs --arg 3

      shipyard train fit.py --runtime python --no-follow
    """
    from shipyard.control.client import ControlError
    from shipyard.train.client import TrainerClient, new_job_name, trainjob_document
    from shipyard.train.types import CommandTrainer

    if not script.is_file():
        fail(f"FILE.py '{script}' does not exist (or is a folder)")
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env '{item}': expected KEY=VALUE")
        variables[key] = value
    trainer = CommandTrainer(["python", str(script.resolve())], args=args, num_nodes=num_nodes, env=variables)
    job = name or new_job_name()
    with api_errors():
        client = TrainerClient(namespace, control=connect(start=True))
        document = trainjob_document(job, runtime or default_runtime(), trainer, home=client.home,
                                     num_proc_per_node=nproc_per_node)
        try:
            client.control.apply(document, namespace=namespace)
        except ControlError as exc:
            if not exc.errors:
                raise
            fail(f"TrainJob {job} was refused:\n" + "\n".join(
                f"  {error['path']}: {error['message']}" if error.get("path") else f"  {error['message']}"
                for error in exc.errors))
    typer.echo(f"trainjob.trainer.kubeflow.org/{job} created", err=True)
    if not follow:
        typer.echo(f"follow it with: shipyard logs trainjob {job} -f", err=True)
        return
    try:
        with api_errors():
            for line in client.get_job_logs(job, "node-0", follow=True):
                typer.echo(line)
            finished = client.wait_for_job_status(job, {"Complete", "Failed"}, timeout=60)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; the job goes on (shipyard logs trainjob {job} -f, "
                   f"shipyard delete trainjob {job})", err=True)
        raise typer.Exit(130) from None
    if finished.status == "Failed":
        from shipyard.train.client import failure_message

        fail(f"TrainJob {job} failed: {failure_message(finished.resource)}")
    typer.echo(f"TrainJob {job} completed", err=True)
