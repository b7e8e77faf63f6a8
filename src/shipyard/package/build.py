"""``shipyard build``: plan a model package's container build context and write it, with its KServe manifests.

The context holds a ``Dockerfile``, ``requirements.txt`` (this Shipyard, as a wheel when it runs
from a source folder, and the model's libraries pinned at the versions installed here), a copy of
the package under ``models/<name>/``, the package's fetched weights, ``kubernetes/`` manifests
(a KServe ``ServingRuntime`` and ``InferenceService``) and a ``README.md`` with the commands to
build, run, push and deploy. This module checks the package and options into a ``BuildPlan``,
copies the package and weights, writes the README and puts it all together; ``image`` renders
what goes into the image and ``manifests`` the Kubernetes side. Nothing is written until the
package and the options are checked, and the context is written to a temporary folder renamed
into place, so OUT is never half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shipyard.package.build_plan import BuildError, BuildPlan
from shipyard.package.config import CONFIG_FILE, PackageConfig, read_config
from shipyard.package.image import (
    DOCKERIGNORE,
    GRPC_PORT,
    HTTP_PORT,
    IMAGE_WEIGHTS_CACHE,
    base_image,
    model_requirements,
    render_dockerfile,
    render_requirements,
    shipyard_requirement,
    system_packages,
)
from shipyard.package.manifests import (
    INFERENCE_SERVICE_FILE,
    KSERVE_MODEL_DIR,
    SERVING_RUNTIME_FILE,
    kubernetes_name,
    render_manifests,
    runtime_name,
)
from shipyard.package.source import model_source
from shipyard.package.weights import fetch, materialise, weight_path, weights_cache

#: Files and folders of a package never copied into an image (``.env`` and ``secrets/`` may hold secret values).
SKIPPED = ("__pycache__", "*.pyc", ".git", ".venv", ".ipynb_checkpoints", ".pytest_cache", ".DS_Store", ".env",
           "secrets")
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")
IMAGE_NAME = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)
REGISTRY = re.compile(r"^[a-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class BuildOptions:
    """What ``shipyard build`` takes besides the package folder and OUT."""

    #: ``NAME[:TAG]``; default ``<model>:<version>``.
    image: str | None = None
    #: Prefixed to the image name, e.g. ``ghcr.io/acme``.
    registry: str | None = None
    #: Where KServe fetches the package from; None serves the copy baked into the image.
    storage_uri: str | None = None
    #: Replace a non-empty OUT.
    force: bool = False


@dataclass
class BuildResult:
    """What was written."""

    out: Path
    plan: BuildPlan
    #: The line of requirements.txt that installs Shipyard (a wheel path or a ``shipyard==`` pin).
    shipyard_requirement: str
    warnings: list[str]


def build_context(package_dir: Path, out: Path, options: BuildOptions = BuildOptions()) -> BuildResult:
    """Check the package and options, then write the build context to ``out`` (atomically)."""
    plan = plan_build(package_dir, options)
    out = _check_out(Path(out), plan.package_dir, options.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staging.chmod(0o755)
        shipyard_line = shipyard_requirement(staging / "wheels")
        weights = _stage_weights(plan, staging)
        _copy_package(plan.package_dir, staging / "models" / plan.name, skip={out, staging}, weights=weights)
        files = {
            "Dockerfile": render_dockerfile(plan, wheel=(staging / "wheels").is_dir(), weights=bool(weights)),
            "requirements.txt": render_requirements(plan, shipyard_line),
            ".dockerignore": DOCKERIGNORE,
            **render_manifests(plan),
            "README.md": render_readme(plan),
        }
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildResult(out, plan, shipyard_line, plan.warnings)


def plan_build(package_dir: Path, options: BuildOptions = BuildOptions()) -> BuildPlan:
    """Read and check the package and the options (PackageError / BuildError); nothing is written to OUT.

    The package's weights are fetched and linked in first, as serving it does: its artifact may be one.
    """
    folder = Path(package_dir).expanduser()
    if not folder.is_dir():
        raise BuildError(f"package folder '{package_dir}' does not exist" if not folder.exists()
                         else f"'{package_dir}' is a file; give the package folder that holds {CONFIG_FILE}")
    folder = folder.resolve()
    if not (folder / CONFIG_FILE).is_file():
        raise BuildError(
            f"{folder} has no {CONFIG_FILE}, so it is not a model package; create one with "
            f"`shipyard init {package_dir}`, or make a package from a trained model with `shipyard package`"
        )
    config, _, warnings = read_config(folder)
    where = str(folder / CONFIG_FILE)
    _check_options(options)
    _check_environment(config, where)
    _check_system_packages(config, where)
    materialise(folder, config.weights)  # the artifact may be one of the weights
    source, _ = model_source(folder)
    k8s_name = kubernetes_name(source.name)
    gpu = config.resources.gpu > 0
    requirements, pin_warnings = model_requirements(config, folder, source.format, source.path, gpu=gpu)
    warnings += pin_warnings
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    python_version = config.python_version or running
    if python_version != running:
        warnings.append(f"the pins come from this Python {running} environment, but the image runs Python "
                        f"{python_version}; check they install there")
    return BuildPlan(
        package_dir=folder,
        config=config,
        name=source.name,
        k8s_name=k8s_name,
        format=source.format,
        image=image_reference(options.image, options.registry, k8s_name, config.version),
        python_version=python_version,
        system_packages=system_packages(source.format, config),
        requirements=requirements,
        storage_uri=options.storage_uri,
        warnings=warnings,
    )


def image_reference(image: str | None, registry: str | None, k8s_name: str, version: str) -> str:
    """``[REGISTRY/]NAME:TAG``; the tag defaults to the package version."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", version).lstrip(".-")[:128] or "latest"
    reference = image or f"{k8s_name}:{tag}"
    if ":" not in reference.rsplit("/", 1)[-1]:
        reference = f"{reference}:{tag}"
    if not IMAGE_NAME.match(reference):
        raise BuildError(f"--image '{image}' is not a valid image name; use lowercase letters, digits, '.', '_', "
                         "'-' and '/', then an optional :TAG (e.g. iris:1)")
    if registry is not None:
        registry = registry.rstrip("/")
        if not REGISTRY.match(registry):
            raise BuildError(f"--registry '{registry}' is not a registry; expected a host and optional path in "
                             "lowercase, e.g. ghcr.io/acme or localhost:5000")
        reference = f"{registry}/{reference}"
    return reference


def _check_environment(config: PackageConfig, where: str) -> None:
    for key, value in config.environment_variables.items():
        if not ENV_NAME.match(key):
            raise BuildError(f"{where}: environment_variables.{key}: not a variable name; use letters, digits "
                             "and '_' (starting with a letter or '_')")
        if "\n" in value or "\r" in value:
            raise BuildError(f"{where}: environment_variables.{key}: a value on several lines cannot go into a "
                             "Dockerfile ENV; keep it on one line")
        if key in config.secrets:
            raise BuildError(f"{where}: {key} is both in environment_variables and in secrets; keep secret values "
                             "out of shipyard.yaml and list the name under 'secrets' only")


def _check_system_packages(config: PackageConfig, where: str) -> None:
    for index, name in enumerate(config.system_packages):
        if not DEBIAN_PACKAGE.match(name):
            raise BuildError(f"{where}: system_packages[{index}] = {name!r}: not a Debian package name "
                             "(lowercase letters, digits, '+', '-', '.', optionally =VERSION)")


def _check_options(options: BuildOptions) -> None:
    image_reference(options.image, options.registry, "model", "1")
    if options.storage_uri is not None and not URI.match(options.storage_uri):
        raise BuildError(f"--storage-uri '{options.storage_uri}' is not a URI; expected e.g. s3://bucket/models/iris "
                         "or pvc://claim/path")


def _stage_weights(plan: BuildPlan, staging: Path) -> dict[Path, str]:
    """Fetch the package's weights (cached) into ``staging/weights/``; return package path -> path in the image.

    The image keeps each file where the weights module caches it under ``$SHIPYARD_HOME``, so the
    package's link resolves there and nothing is downloaded when the container starts.
    """
    links: dict[Path, str] = {}
    for index, weight in enumerate(plan.config.weights):
        cached = fetch(weight, f"{plan.package_dir / CONFIG_FILE}: weights[{index}]")
        relative = cached.relative_to(weights_cache())
        target = staging / "weights" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cached, target)  # weights can be large; a hard link costs nothing when it is possible
        except OSError:
            shutil.copy2(cached, target)
        links[weight_path(weight)] = f"{IMAGE_WEIGHTS_CACHE}/{relative.as_posix()}"
    return links


def _copy_package(source: Path, target: Path, skip: set[Path], weights: dict[Path, str]) -> None:
    """Copy the package (following symlinks), readable by the image's user; weights become links to the image's cache."""
    skipped = {path.resolve() for path in skip}
    weight_files = {source / path for path in weights}
    patterns = shutil.ignore_patterns(*SKIPPED)

    def ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(patterns(folder, names))
        for name in names:
            path = Path(folder) / name
            if path.resolve() in skipped or path in weight_files:
                ignored.add(name)
        return ignored

    try:
        shutil.copytree(source, target, ignore=ignore)
    except shutil.Error as exc:
        problems = "; ".join(f"{where}: {why}" for where, _, why in exc.args[0][:5])
        raise BuildError(f"cannot copy the package {source}: {problems}") from None
    for relative, image_path in weights.items():
        link = target / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image_path)
    for path in [target, *target.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o100
        path.chmod(0o755 if executable else 0o644)


def _check_out(out: Path, package_dir: Path, force: bool) -> Path:
    out = out.expanduser().resolve()
    if out == package_dir or out in package_dir.parents:
        raise BuildError(f"--out {out} holds the package folder {package_dir}; write the context elsewhere")
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BuildError(f"--out {out} is not empty; pass --force to replace it, or choose another folder")
    return out


def _replace(staging: Path, out: Path) -> None:
    """Move the finished context to ``out``; an old ``out`` is moved aside first and removed last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "context")
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render_readme(plan: BuildPlan) -> str:
    """README.md of the context: the commands to build, run, push and deploy."""
    image, name, config = plan.image, plan.name, plan.config
    secret_flags = "".join(f" -e {secret}=..." for secret in config.secrets)
    has_registry = "/" in image  # a registry host or a Docker Hub namespace: something a cluster can pull
    lines = [
        f"# {name}: container image and KServe manifests",
        "",
        f"Written by `shipyard build` from `{plan.package_dir}` (format {plan.format}, version {config.version}).",
        "",
        "| file | what |",
        "|---|---|",
        f"| `Dockerfile` | the image: `{base_image(plan)}`"
        + (f" with Python {plan.python_version}" if plan.gpu else "")
        + f", the requirements, the package in `{plan.model_dir}`, a non-root user |",
        "| `requirements.txt` | Shipyard and the model's libraries, pinned |",
        f"| `models/{name}/` | a copy of the package |",
        "| `kubernetes/` | a KServe `ServingRuntime` and `InferenceService` |",
        "",
        "Run the commands below from this folder.",
        "",
        "## Build",
        "",
        "```sh",
        f"docker build -t {image} .",
        "```",
        "",
        "## Run it locally",
        "",
        "```sh",
        f"docker run --rm -p {HTTP_PORT}:{HTTP_PORT} -p {GRPC_PORT}:{GRPC_PORT}{secret_flags}"
        + (" --gpus all" if plan.gpu else "") + f" {image}",
        f"curl localhost:{HTTP_PORT}/v2/health/ready",
        f"curl localhost:{HTTP_PORT}/v2/models/{name}",
        "```",
        "",
        "Arguments after the image name are added to `shipyard serve` (e.g. `--workers 4`).",
    ]
    if config.secrets:
        lines += ["", "Secrets are never in the image. Give each at run time as an environment variable "
                  "(`-e NAME=...`) or as a file: `-v $PWD/secrets/NAME:/run/secrets/NAME:ro`. Needed: "
                  + ", ".join(f"`{secret}`" for secret in config.secrets) + "."]
    lines += ["", "## Push", "", "```sh"]
    if has_registry:
        lines += [f"docker push {image}"]
    else:
        lines += [f"docker tag {image} REGISTRY/{image}", f"docker push REGISTRY/{image}"]
    lines += ["```", ""]
    if not has_registry:
        lines += ["The manifests name the image `" + image + "`, which a cluster cannot pull. Build again with "
                  "`--registry REGISTRY` so they name the pushed image (a kind cluster can load it instead: "
                  f"`kind load docker-image {image}`).", ""]
    lines += ["## Deploy on Kubernetes with KServe", "", "```sh"]
    if config.secrets:
        literals = " ".join(f"--from-literal={secret}=..." for secret in config.secrets)
        lines += [f"kubectl create secret generic {plan.k8s_name}-secrets {literals}"]
    lines += [f"kubectl apply -f {SERVING_RUNTIME_FILE}", f"kubectl apply -f {INFERENCE_SERVICE_FILE}",
              f"kubectl get inferenceservice {plan.k8s_name}", "```", ""]
    where = (f"from `{plan.storage_uri}` (KServe's storage initializer puts it in `{KSERVE_MODEL_DIR}`)"
             if plan.storage_uri else f"baked into the image at `{plan.model_dir}` (no `storageUri`)")
    lines += [f"The InferenceService `{plan.k8s_name}` serves the model {where} through the ServingRuntime "
              f"`{runtime_name(plan)}`, on REST port {HTTP_PORT} (V1 and V2) and gRPC port {GRPC_PORT}. It asks for "
              "KServe's RawDeployment mode, because Knative (Serverless mode) exposes a single port.", ""]
    return "\n".join(lines)
