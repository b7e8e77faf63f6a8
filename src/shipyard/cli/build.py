"""``shipyard build DIR --out OUT``: a container build context and KServe manifests for a model package."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from shipyard.cli.errors import fail, warn
from shipyard.package.build import BuildOptions, build_context


def build(
    package: Path = typer.Argument(
        ..., metavar="DIR", help="Model package folder (with shipyard.yaml).", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write the build context to (created; must be empty unless --force).",
        show_default=False,
    ),
    image: Optional[str] = typer.Option(
        None, "--image", help="Image NAME[:TAG] (default: the model's name, tagged with its version).",
        show_default=False,
    ),
    registry: Optional[str] = typer.Option(
        None, "--registry", help="Registry the image is pushed to, e.g. ghcr.io/acme; prefixed to the image name "
        "in the manifests and commands.", show_default=False,
    ),
    storage_uri: Optional[str] = typer.Option(
        None, "--storage-uri", help="Where KServe fetches the package from (s3://, gs://, pvc://, ...); by default "
        "the InferenceService serves the copy baked into the image.", show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is not empty."),
) -> None:
    """Write a container build context and KServe manifests for a package.

    OUT gets a Dockerfile, pinned requirements, a copy of the package, KServe manifests and a README
    with the commands to build, run, push and deploy.

    [b]Examples[/b]

      shipyard build iris/ --out build/iris

      shipyard build iris/ --out build/iris --registry ghcr.io/acme --force

      shipyard build iris/ --out build/iris --storage-uri s3://models/iris
    """
    options = BuildOptions(image=image, registry=registry, storage_uri=storage_uri, force=force)
    try:
        result = build_context(package, out, options)
    except (ValueError, OSError) as exc:  # a bad package or option; or OUT cannot be written
        fail(str(exc))
    for message in result.warnings:
        warn(message)
    plan = result.plan
    console = Console(highlight=False)
    out_text = escape(str(result.out))
    console.print(f"Wrote the build context of [bold]{plan.name}[/] ({plan.format}) to {out_text}", soft_wrap=True)
    console.print(f"  image      {plan.image}")
    console.print(f"  shipyard   {escape(result.shipyard_requirement)}", soft_wrap=True)
    console.print(f"  manifests  {out_text}/kubernetes", soft_wrap=True)
    console.print(f"Next: docker build -t {plan.image} {out_text}   (commands: {out_text}/README.md)", soft_wrap=True)
