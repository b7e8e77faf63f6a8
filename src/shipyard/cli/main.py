"""Entry point: ``shipyard [COMMAND]``."""

from __future__ import annotations

import typer

from shipyard import __version__
from shipyard.cli import batch, build, control, data, monitor, package, predict, resources, rollout, serve, test, train

app = typer.Typer(
    name="shipyard",
    help="Take a model to production on one machine: cache its data (Fluid's Dataset), train it (Kubeflow's "
    "TrainJob), package and test it, serve it (KServe V1/V2, REST and gRPC, rollouts) and ship it as a container "
    "with KServe manifests.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("init")(package.init)
app.command("package")(package.package)
app.command("test")(test.test)
app.command("serve")(serve.serve)
app.command("predict")(predict.predict)
app.command("batch")(batch.batch)
app.command("build")(build.build)
app.command("up")(control.up)
app.command("apply")(resources.apply)
app.command("get")(resources.get)
app.command("describe")(resources.describe)
app.command("delete")(resources.delete)
app.command("logs")(resources.logs)
app.add_typer(rollout.app, name="rollout")
app.command("train")(train.train)
app.add_typer(data.app, name="data")
app.add_typer(monitor.app, name="monitor")


@app.command("version")
def version() -> None:
    """Print Shipyard's version."""
    typer.echo(__version__)


def main() -> None:
    app()
