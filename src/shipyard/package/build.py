"""``shipyard build``: a container build context for a model package, with its KServe manifests.

The context holds a ``Dockerfile``, ``requirements.txt`` (this Shipyard, as a wheel when it runs
from a source folder, and the model's libraries pinned at the versions installed here), a copy of
the package under ``models/<name>/``, the package's fetched weights, ``kubernetes/`` manifests
(a KServe ``ServingRuntime`` and ``InferenceService``) and a ``README.md`` with the commands to
build, run, push and deploy. Nothing is written until the package and the options are checked,
and the context is written to a temporary folder renamed into place, so OUT is never half-written.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from shipyard import __version__
from shipyard.package.config import CONFIG_FILE, PackageConfig, Weight, read_config, requirements_of
from shipyard.package.pins import format_requirements, pin
from shipyard.package.source import model_source
from shipyard.package.weights import fetch, file_name, materialise, weights_cache
from shipyard.runtimes.pickled import PICKLE_SUFFIXES

HTTP_PORT = 8080
GRPC_PORT = 8081
#: The image's user: numeric, so Kubernetes can check ``runAsNonRoot`` without reading /etc/passwd.
USER_ID = 10001
HOME = "/home/shipyard"
#: ``$SHIPYARD_HOME`` in the image; baked weights sit in its cache where the weights module looks.
IMAGE_SHIPYARD_HOME = f"{HOME}/.shipyard"
#: Where KServe's storage initializer puts the files of a ``storageUri``.
KSERVE_MODEL_DIR = "/mnt/models"
CUDA_BASE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
#: The Python Ubuntu 22.04 ships; other versions come from the deadsnakes PPA.
CUDA_SYSTEM_PYTHON = "3.10"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: KServe's modelFormat names, where they differ from Shipyard's format names.
KSERVE_FORMATS = {"python": "custom"}
#: Debian packages a runtime needs that a slim image lacks (the wheels of these link libgomp).
RUNTIME_SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {
    "xgboost": ("libgomp1",), "lightgbm": ("libgomp1",), "r": ("r-base-core",),
}
#: CPU distribution -> the one a GPU image installs instead (same version).
GPU_DISTRIBUTIONS = {"xgboost-cpu": "xgboost", "onnxruntime": "onnxruntime-gpu"}
#: Import name -> distribution, for modules that are not installed here (so cannot be looked up).
DISTRIBUTION_NAMES = {"sklearn": "scikit-learn", "sentence_transformers": "sentence-transformers"}
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
PROJECT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class BuildError(ValueError):
    """The build cannot go ahead; the message names the option or key and what was expected."""


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
class BuildPlan:
    """Everything the context's files are rendered from, checked before anything is written."""

    package_dir: Path
    config: PackageConfig
    #: The name the model is served under, and its Kubernetes (DNS-1035) spelling.
    name: str
    k8s_name: str
    #: Shipyard's format name (sklearn, ..., python).
    format: str
    image: str
    python_version: str
    system_packages: list[str]
    #: Pinned requirements besides Shipyard itself, in install order.
    requirements: list[str]
    storage_uri: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        return self.config.resources.gpu > 0

    @property
    def model_dir(self) -> str:
        """The package's folder in the image."""
        return f"/models/{self.name}"

    @property
    def workers(self) -> int:
        """Worker processes for the requested CPUs: whole cores, at least one (a container sees every core)."""
        cpu = self.config.resources.cpu
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        return max(1, math.floor(cores))


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
            "kubernetes/servingruntime.yaml": _yaml(serving_runtime(plan)),
            "kubernetes/inferenceservice.yaml": _yaml(inference_service(plan)),
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
        system_packages=list(dict.fromkeys([*RUNTIME_SYSTEM_PACKAGES.get(source.format, ()),
                                            *config.system_packages])),
        requirements=requirements,
        storage_uri=options.storage_uri,
        warnings=warnings,
    )


def kubernetes_name(name: str) -> str:
    """A model name as a DNS-1035 label (what InferenceService names must be): ``Iris_v2`` -> ``iris-v2``."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not label[:1].isalpha():
        label = f"model-{label}".rstrip("-")
    if len(label) > 63:
        raise BuildError(f"model name '{name}' is too long for a Kubernetes name ({len(label)} characters, "
                         "at most 63); set a shorter 'name' in shipyard.yaml")
    return label


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


def project_name(requirement: str) -> str | None:
    """The normalised project name of a requirement line (PEP 503), or None for options and paths."""
    text = requirement.strip()
    match = PROJECT_NAME.match(text)
    if text.startswith(("-", ".", "/")) or re.match(r"^[a-z][a-z0-9+.-]*://", text) or not match:
        return None
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def model_requirements(
    config: PackageConfig, folder: Path, fmt: str, artifact: Path, gpu: bool
) -> tuple[list[str], list[str]]:
    """Shipyard's dependencies and the format's libraries pinned as installed here, then the package's own.

    A project the package requires itself is installed as the package says, not at our pin.
    """
    modules: list[str] = []
    if artifact.suffix.lower() in PICKLE_SUFFIXES:
        modules += ["joblib", "sklearn"]  # a pickled estimator loads through joblib and the scikit-learn API
    if fmt == "huggingface" and any((artifact / marker).is_file() for marker in
                                    ("modules.json", "config_sentence_transformers.json")):
        modules.append("sentence_transformers")
    framework, missing = format_requirements(fmt, modules)
    warnings = [f"{module} is not installed here, so the image installs its newest version unpinned"
                for module in missing]
    pins = _shipyard_dependency_pins() + framework + [DISTRIBUTION_NAMES.get(m, m) for m in missing]
    if gpu:
        pins = [_gpu_variant(line) for line in pins]
    own = requirements_of(config, folder)
    own_names = {project_name(line) for line in own}
    chosen: dict[str, str] = {}
    for line in pins:
        name = project_name(line)
        if name in own_names:
            if line not in own:
                warnings.append(f"the package requires its own {name} ({_matching(own, name)}); "
                                f"the image uses that instead of {line}, the version installed here")
            continue
        chosen.setdefault(name or line, line)
    for line in own:
        if project_name(line) == "shipyard":
            warnings.append(f"the package's requirement '{line}' is left out: the image installs this Shipyard")
            continue
        chosen.setdefault(project_name(line) or line, line)
    return list(chosen.values()), warnings


def _matching(lines: list[str], name: str) -> str:
    return next(line for line in lines if project_name(line) == name)


def _gpu_variant(line: str) -> str:
    name, _, version = line.partition("==")
    return f"{GPU_DISTRIBUTIONS.get(name, name)}=={version}" if version else line


def _shipyard_dependency_pins() -> list[str]:
    """Shipyard's own dependencies at the versions installed here (the image then matches what was tested)."""
    try:
        requires = importlib.metadata.requires("shipyard") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    pins = []
    for requirement in requires:
        name = PROJECT_NAME.match(requirement)
        if name is None or "extra ==" in requirement:
            continue
        try:
            pins.append(pin(name.group(1)))
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency for another platform (uvloop on Windows)
    return pins


def shipyard_requirement(wheel_dir: Path) -> str:
    """The requirement line that installs this Shipyard in the image.

    Installed from a source folder (``pip install -e .``): a wheel built from it into ``wheel_dir``,
    so the image runs the code that built it. Installed from a wheel file: that wheel. Otherwise
    the released version, ``shipyard==<version>``.
    """
    try:
        distribution = importlib.metadata.distribution("shipyard")
        version = distribution.version
        origin = json.loads(distribution.read_text("direct_url.json") or "null")
    except (importlib.metadata.PackageNotFoundError, json.JSONDecodeError):
        return f"shipyard=={__version__}"
    url = origin.get("url", "") if isinstance(origin, dict) else ""
    path = Path(urlparse(url).path) if url.startswith("file://") else None
    if path is not None and path.is_dir() and (path / "pyproject.toml").is_file():
        return _build_wheel(path, wheel_dir)
    if path is not None and path.suffix == ".whl" and path.is_file():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, wheel_dir / path.name)
        return f"./wheels/{path.name}"
    return f"shipyard=={version}"


def _build_wheel(project: Path, wheel_dir: Path) -> str:
    """Build from a private copy of the project's files and ``src/``: setuptools writes ``build/`` into the
    source folder, which would litter the checkout and collide with any other build running there."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheel_dir)]
    if importlib.util.find_spec("setuptools") is not None:
        command.append("--no-build-isolation")  # the build backend is here: no isolated environment to download
    with tempfile.TemporaryDirectory(prefix="shipyard-wheel-") as scratch:
        source = Path(scratch) / project.name
        source.mkdir()
        for path in project.iterdir():
            if path.is_file():
                shutil.copy2(path, source / path.name)
        shutil.copytree(project / "src", source / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        result = subprocess.run([*command, str(source)], capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("shipyard-*.whl")) if wheel_dir.is_dir() else []
    if result.returncode != 0 or not wheels:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BuildError(f"building a wheel of Shipyard from {project} failed (pip wheel exited with "
                         f"{result.returncode}):\n{tail}")
    return f"./wheels/{wheels[-1].name}"


def _weight_path(weight: Weight) -> Path:
    """Where a weight appears in the package (the weights module's default: ``data/<file name>``)."""
    return Path(weight.path or Path("data") / file_name(weight.uri))


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
        links[_weight_path(weight)] = f"{IMAGE_SHIPYARD_HOME}/cache/weights/{relative.as_posix()}"
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


def _quoted(value: str) -> str:
    """A Dockerfile double-quoted word: ``\\``, ``"`` and ``$`` (variable expansion) escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _run(*commands: str) -> list[str]:
    """One RUN instruction, a command per line."""
    return ["RUN " + " \\\n    && ".join(commands), ""]


def entrypoint(plan: BuildPlan) -> list[str]:
    """The container's command: serve the baked package on every interface."""
    return ["shipyard", "serve", plan.model_dir, "--host", "0.0.0.0", "--http-port", str(HTTP_PORT),
            "--grpc-port", str(GRPC_PORT), "--workers", str(plan.workers)]


def healthcheck_command() -> list[str]:
    """Python's urllib (slim images have no curl): exit 1 unless the server answers ready."""
    return ["python", "-c", "import urllib.request; "
            f"urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/v2/health/ready', timeout=4)"]


def render_dockerfile(plan: BuildPlan, wheel: bool, weights: bool) -> str:
    """The Dockerfile: base image, system packages, pinned requirements, weights, package, user, server."""
    config, python = plan.config, plan.python_version
    lines = [
        f"# Image of model '{plan.name}' ({plan.format}), version {config.version}; written by `shipyard build`.",
        f"# Build it from this folder: docker build -t {plan.image} .",
    ]
    if plan.gpu:
        lines += [f"FROM {CUDA_BASE}", "", "ENV DEBIAN_FRONTEND=noninteractive", ""]
        if python == CUDA_SYSTEM_PYTHON:
            lines += _run("apt-get update",
                          f"apt-get install -y --no-install-recommends ca-certificates python{python} "
                          f"python{python}-venv",
                          "rm -rf /var/lib/apt/lists/*")
        else:
            lines += [f"# Python {python} from the deadsnakes PPA (Ubuntu 22.04 ships {CUDA_SYSTEM_PYTHON})."]
            lines += _run("apt-get update",
                          "apt-get install -y --no-install-recommends ca-certificates gpg-agent "
                          "software-properties-common",
                          "add-apt-repository -y ppa:deadsnakes/ppa",
                          "apt-get update",
                          f"apt-get install -y --no-install-recommends python{python} python{python}-venv",
                          "rm -rf /var/lib/apt/lists/*")
        python_command = f"python{python}"
    else:
        lines += [f"FROM python:{python}-slim", ""]
        python_command = "python"
    lines += ["ENV PYTHONUNBUFFERED=1 \\", "    PYTHONDONTWRITEBYTECODE=1 \\", "    PIP_NO_CACHE_DIR=1 \\",
              "    PIP_DISABLE_PIP_VERSION_CHECK=1", ""]
    if plan.system_packages:
        lines += ["# System packages (shipyard.yaml system_packages, and what the runtime needs)."]
        lines += _run("apt-get update",
                      "apt-get install -y --no-install-recommends " + " ".join(plan.system_packages),
                      "rm -rf /var/lib/apt/lists/*")
    lines += [f"RUN {python_command} -m venv /opt/venv", 'ENV PATH="/opt/venv/bin:$PATH"', ""]
    lines += ["# Requirements before the model, so editing the model keeps this layer cached.",
              "WORKDIR /tmp/build", "COPY requirements.txt ./"]
    if wheel:
        lines += ["COPY wheels/ ./wheels/"]
    lines += _run("pip install -r requirements.txt", "rm -rf /tmp/build")
    lines += ["# A user of its own: the server never runs as root."]
    lines += _run(f"useradd --uid {USER_ID} --create-home --home-dir {HOME} --shell /usr/sbin/nologin shipyard",
                  f"mkdir -p {IMAGE_SHIPYARD_HOME}/cache/weights",
                  f"chown -R {USER_ID}:{USER_ID} {HOME}")
    lines += [f"ENV SHIPYARD_HOME={IMAGE_SHIPYARD_HOME}", ""]
    if weights:
        lines += ["# Weights (shipyard.yaml weights), fetched at build time into the cache the package links to.",
                  f"COPY --chown={USER_ID}:{USER_ID} weights/ {IMAGE_SHIPYARD_HOME}/cache/weights/", ""]
    lines += [f"COPY models/{plan.name}/ {plan.model_dir}/", ""]
    if config.environment_variables:
        lines += ["ENV " + " \\\n    ".join(f"{key}={_quoted(value)}"
                                           for key, value in config.environment_variables.items()), ""]
    if config.secrets:
        lines += ["# Secrets are never baked into the image. Set them at run time:"]
        lines += [f"#   {name}: -e {name}=... or mount /run/secrets/{name}" for name in config.secrets]
        lines += [""]
    labels = {"org.opencontainers.image.title": plan.name, "org.opencontainers.image.version": config.version}
    if config.description:
        labels["org.opencontainers.image.description"] = " ".join(config.description.split())
    lines += ["LABEL " + " \\\n    ".join(f"{key}={_quoted(value)}" for key, value in labels.items()), ""]
    lines += [f"USER {USER_ID}", f"WORKDIR {HOME}", f"EXPOSE {HTTP_PORT} {GRPC_PORT}", ""]
    lines += ["HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \\",
              f"    CMD {json.dumps(healthcheck_command())}", ""]
    lines += [f"ENTRYPOINT {json.dumps(entrypoint(plan))}", ""]
    return "\n".join(lines)


def render_requirements(plan: BuildPlan, shipyard_line: str) -> str:
    """requirements.txt: Shipyard, then the pins (PyTorch's CPU wheels on an image without a GPU)."""
    lines = [f"# Installed into the image of '{plan.name}' before the package is copied in; written by "
             "`shipyard build`.", "# Versions are pinned to the environment the image was built from."]
    if not plan.gpu and any(project_name(line) == "torch" for line in plan.requirements):
        lines += ["# CPU-only PyTorch wheels (no GPU requested in resources).", f"--extra-index-url {TORCH_CPU_INDEX}"]
    lines += [shipyard_line, *plan.requirements]
    return "\n".join(lines) + "\n"


DOCKERIGNORE = """\
# Only what the Dockerfile copies goes to the build.
kubernetes/
README.md
**/__pycache__
**/*.pyc
**/.git
**/.DS_Store
**/.env
"""


def _resources(plan: BuildPlan) -> dict[str, Any]:
    resources = plan.config.resources
    amounts: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpu:
        amounts["nvidia.com/gpu"] = resources.gpu
    return {"requests": dict(amounts), "limits": dict(amounts)}


def runtime_name(plan: BuildPlan) -> str:
    """The ServingRuntime's name: one per model, since its image carries the model."""
    return f"shipyard-{plan.k8s_name}"


def kserve_format(plan: BuildPlan) -> str:
    return KSERVE_FORMATS.get(plan.format, plan.format)


def serving_runtime(plan: BuildPlan) -> dict[str, Any]:
    """A KServe ServingRuntime (serving.kserve.io/v1alpha1) running this image."""
    model_dir = KSERVE_MODEL_DIR if plan.storage_uri else plan.model_dir
    http_probe = {"path": "/v2/health/ready", "port": HTTP_PORT}
    container = {
        "name": "kserve-container",
        "image": plan.image,
        "command": ["shipyard"],
        "args": ["serve", model_dir, "--name", plan.name, "--host", "0.0.0.0", "--http-port", str(HTTP_PORT),
                 "--grpc-port", str(GRPC_PORT), "--workers", str(plan.workers)],
        "ports": [
            {"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(plan),
        "readinessProbe": {"httpGet": http_probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {**http_probe, "path": "/v2/health/live"}, "periodSeconds": 15,
                          "failureThreshold": 4},
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime_name(plan), "labels": {"app.kubernetes.io/managed-by": "shipyard"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"},
            # autoSelect off: this runtime's image carries one model, so only InferenceServices naming it use it.
            "supportedModelFormats": [{"name": kserve_format(plan), "autoSelect": False}],
            "protocolVersions": ["v1", "v2", "grpc-v2"],
            "multiModel": False,
            "containers": [container],
        },
    }


def inference_service(plan: BuildPlan) -> dict[str, Any]:
    """A KServe InferenceService (serving.kserve.io/v1beta1) serving the model with this runtime.

    Without a storage URI the model is the one baked into the image, so ``storageUri`` is left out
    (it is optional in the CRD) and no storage initializer runs.
    """
    # Kubernetes expands $(NAME) in values; $$ keeps a literal $.
    env: list[dict[str, Any]] = [{"name": key, "value": value.replace("$(", "$$(")}
                                 for key, value in plan.config.environment_variables.items()]
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": f"{plan.k8s_name}-secrets", "key": name}}}
            for name in plan.config.secrets]
    model: dict[str, Any] = {
        "modelFormat": {"name": kserve_format(plan)},
        "runtime": runtime_name(plan),
        "protocolVersion": "v2",
    }
    if plan.storage_uri:
        model["storageUri"] = plan.storage_uri
    model["resources"] = _resources(plan)
    if env:
        model["env"] = env
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": plan.k8s_name,
            "labels": {"app.kubernetes.io/managed-by": "shipyard"},
            # Two ports (REST and gRPC) need a plain Deployment: Knative (Serverless mode) allows one.
            # KServe 0.15+ calls this mode Standard and still accepts the old name, which older ones need.
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {"predictor": {"model": model}},
    }


def _yaml(document: dict[str, Any]) -> str:
    return "# Written by `shipyard build`.\n" + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


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
        "| `Dockerfile` | the image: " + (f"`{CUDA_BASE}` with Python {plan.python_version}" if plan.gpu
                                         else f"`python:{plan.python_version}-slim`")
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
    lines += ["kubectl apply -f kubernetes/servingruntime.yaml", "kubectl apply -f kubernetes/inferenceservice.yaml",
              f"kubectl get inferenceservice {plan.k8s_name}", "```", ""]
    where = (f"from `{plan.storage_uri}` (KServe's storage initializer puts it in `{KSERVE_MODEL_DIR}`)"
             if plan.storage_uri else f"baked into the image at `{plan.model_dir}` (no `storageUri`)")
    lines += [f"The InferenceService `{plan.k8s_name}` serves the model {where} through the ServingRuntime "
              f"`{runtime_name(plan)}`, on REST port {HTTP_PORT} (V1 and V2) and gRPC port {GRPC_PORT}. It asks for "
              "KServe's RawDeployment mode, because Knative (Serverless mode) exposes a single port.", ""]
    return "\n".join(lines)
