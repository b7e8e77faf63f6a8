"""What goes into a model's container image: the Dockerfile, the pinned requirements, Shipyard's wheel, .dockerignore.

The image runs ``shipyard serve`` on the package copied to ``/models/<name>`` as a non-root user,
on the ports and with the health check defined here (the KServe manifests use the same ones).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from shipyard import __version__
from shipyard.package.build_plan import BuildError, BuildPlan
from shipyard.package.config import PackageConfig, requirements_of
from shipyard.package.pins import format_requirements, pin
from shipyard.runtimes.pickled import PICKLE_SUFFIXES

HTTP_PORT = 8080
GRPC_PORT = 8081
#: The image's user: numeric, so Kubernetes can check ``runAsNonRoot`` without reading /etc/passwd.
USER_ID = 10001
HOME = "/home/shipyard"
#: ``$SHIPYARD_HOME`` in the image; baked weights sit in its cache where the weights module looks.
IMAGE_SHIPYARD_HOME = f"{HOME}/.shipyard"
#: Where the weights module caches weights in the image, and so where the build puts them.
IMAGE_WEIGHTS_CACHE = f"{IMAGE_SHIPYARD_HOME}/cache/weights"
CUDA_BASE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
#: The Python Ubuntu 22.04 ships; other versions come from the deadsnakes PPA.
CUDA_SYSTEM_PYTHON = "3.10"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Debian packages a runtime needs that a slim image lacks (the wheels of these link libgomp).
RUNTIME_SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {
    "xgboost": ("libgomp1",), "lightgbm": ("libgomp1",), "r": ("r-base-core",),
}
#: CPU distribution -> the one a GPU image installs instead (same version).
GPU_DISTRIBUTIONS = {"xgboost-cpu": "xgboost", "onnxruntime": "onnxruntime-gpu"}
#: Import name -> distribution, for modules that are not installed here (so cannot be looked up).
DISTRIBUTION_NAMES = {"sklearn": "scikit-learn", "sentence_transformers": "sentence-transformers"}
PROJECT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
APT_CLEAN = "rm -rf /var/lib/apt/lists/*"

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


def base_image(plan: BuildPlan) -> str:
    """The image built on: CUDA's runtime image when a GPU is requested, else Python's slim image."""
    return CUDA_BASE if plan.gpu else f"python:{plan.python_version}-slim"


def system_packages(fmt: str, config: PackageConfig) -> list[str]:
    """The Debian packages the image installs: what the format's runtime needs, then ``system_packages``."""
    return list(dict.fromkeys([*RUNTIME_SYSTEM_PACKAGES.get(fmt, ()), *config.system_packages]))


def serve_options(plan: BuildPlan) -> list[str]:
    """The ``shipyard serve`` options the container runs with: every interface, the image's ports, the workers."""
    return ["--host", "0.0.0.0", "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
            "--workers", str(plan.workers)]


def entrypoint(plan: BuildPlan) -> list[str]:
    """The container's command: serve the baked package on every interface."""
    return ["shipyard", "serve", plan.model_dir, *serve_options(plan)]


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
        f"FROM {base_image(plan)}",
        "",
    ]
    if plan.gpu:
        lines += ["ENV DEBIAN_FRONTEND=noninteractive", ""]
        python_packages = (f"python{python}", f"python{python}-venv")
        if python == CUDA_SYSTEM_PYTHON:
            lines += _run(*_apt_install("ca-certificates", *python_packages), APT_CLEAN)
        else:
            lines += [f"# Python {python} from the deadsnakes PPA (Ubuntu 22.04 ships {CUDA_SYSTEM_PYTHON})."]
            lines += _run(*_apt_install("ca-certificates", "gpg-agent", "software-properties-common"),
                          "add-apt-repository -y ppa:deadsnakes/ppa",
                          *_apt_install(*python_packages),
                          APT_CLEAN)
        python_command = f"python{python}"
    else:
        python_command = "python"
    lines += ["ENV PYTHONUNBUFFERED=1 \\", "    PYTHONDONTWRITEBYTECODE=1 \\", "    PIP_NO_CACHE_DIR=1 \\",
              "    PIP_DISABLE_PIP_VERSION_CHECK=1", ""]
    if plan.system_packages:
        lines += ["# System packages (shipyard.yaml system_packages, and what the runtime needs)."]
        lines += _run(*_apt_install(*plan.system_packages), APT_CLEAN)
    lines += [f"RUN {python_command} -m venv /opt/venv", 'ENV PATH="/opt/venv/bin:$PATH"', ""]
    lines += ["# Requirements before the model, so editing the model keeps this layer cached.",
              "WORKDIR /tmp/build", "COPY requirements.txt ./"]
    if wheel:
        lines += ["COPY wheels/ ./wheels/"]
    lines += _run("pip install -r requirements.txt", "rm -rf /tmp/build")
    lines += ["# A user of its own: the server never runs as root."]
    lines += _run(f"useradd --uid {USER_ID} --create-home --home-dir {HOME} --shell /usr/sbin/nologin shipyard",
                  f"mkdir -p {IMAGE_WEIGHTS_CACHE}",
                  f"chown -R {USER_ID}:{USER_ID} {HOME}")
    lines += [f"ENV SHIPYARD_HOME={IMAGE_SHIPYARD_HOME}", ""]
    if weights:
        lines += ["# Weights (shipyard.yaml weights), fetched at build time into the cache the package links to.",
                  f"COPY --chown={USER_ID}:{USER_ID} weights/ {IMAGE_WEIGHTS_CACHE}/", ""]
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


def _quoted(value: str) -> str:
    """A Dockerfile double-quoted word: ``\\``, ``"`` and ``$`` (variable expansion) escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _run(*commands: str) -> list[str]:
    """One RUN instruction, a command per line."""
    return ["RUN " + " \\\n    && ".join(commands), ""]


def _apt_install(*packages: str) -> list[str]:
    """The commands installing Debian packages (end the RUN with ``APT_CLEAN`` so the lists stay out of the layer)."""
    return ["apt-get update", "apt-get install -y --no-install-recommends " + " ".join(packages)]


def render_requirements(plan: BuildPlan, shipyard_line: str) -> str:
    """requirements.txt: Shipyard, then the pins (PyTorch's CPU wheels on an image without a GPU)."""
    lines = [f"# Installed into the image of '{plan.name}' before the package is copied in; written by "
             "`shipyard build`.", "# Versions are pinned to the environment the image was built from."]
    if not plan.gpu and any(project_name(line) == "torch" for line in plan.requirements):
        lines += ["# CPU-only PyTorch wheels (no GPU requested in resources).", f"--extra-index-url {TORCH_CPU_INDEX}"]
    lines += [shipyard_line, *plan.requirements]
    return "\n".join(lines) + "\n"


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
