"""Isolated environments: whether a package's model needs its own, and building it (once).

A package is isolated when ``isolate: always``, or (``isolate: auto``, the default) when the
server's environment does not satisfy its requirements (versions, markers and extras checked
against what is installed) or it asks for another ``python_version``. Its environment is a
virtual environment under ``$SHIPYARD_HOME/envs/<key>``, where the key hashes the normalised
requirements, the Python version and the worker protocol, so packages with the same requirements
share one and a second start reuses it. It is built with ``uv`` when available (much faster),
else ``python -m venv`` and pip, in a temporary folder renamed into place when complete, under a
file lock so two servers never build the same one at once. Nothing of the server's environment is
visible in it except Shipyard's own package, linked in through a ``.pth`` file so the worker can
import its runtime code (which needs only numpy, always installed there).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator, Union

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import shipyard
from shipyard.home import shipyard_home
from shipyard.package.config import CONFIG_FILE, REQUIREMENTS_FILE, PackageConfig, PackageError, requirements_of
from shipyard.runtimes.isolated import HIDDEN_VARIABLES, Isolation
from shipyard.runtimes.tensor_pipe import WORKER_PROTOCOL

#: pip options a requirements list may hold (where packages come from); others (-e, -r, -c) are refused.
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "-i", "-f")
#: Written last into a complete environment: what it holds and how it was built.
META_FILE = "shipyard-env.json"
#: The folder holding only the ``shipyard`` link that the environment's ``.pth`` file adds.
LINK_FOLDER = "shipyard-path"
PTH_FILE = "shipyard.pth"
BUILD_TIMEOUT_SECONDS = 1800
#: ``pip`` forces python -m venv + pip even where uv is installed (pip reads pip.conf; uv does not).
INSTALLER_VARIABLE = "SHIPYARD_ENV_INSTALLER"
ERROR_LINES = 15

RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SHIPYARD_DIR = Path(shipyard.__file__).resolve().parent

log = logging.getLogger("shipyard.package.environment")

Line = Union[Requirement, str]


class EnvironmentBuildError(RuntimeError):
    """A package's environment could not be built; the message quotes the installer's last lines."""


def environments_dir() -> Path:
    """Where isolated environments live: ``$SHIPYARD_HOME/envs`` (delete it to rebuild them all)."""
    return shipyard_home() / "envs"


# -- requirements ----------------------------------------------------------------------------------
def parse_requirements(lines: list[str], where: str, indexed: bool = True) -> list[Line]:
    """Each line as a :class:`Requirement`, or an index option kept as text; PackageError names a bad
    one as ``where[index] = 'line'`` (a list) or ``where: 'line'`` (a file)."""
    parsed: list[Line] = []
    for index, line in enumerate(lines):
        text = line.strip()
        place = f"{where}[{index}] = {line!r}" if indexed else f"{where}: {line!r}"
        if text.startswith("-"):
            option = re.split(r"[\s=]", text, maxsplit=1)[0]
            if option not in INDEX_OPTIONS:
                raise PackageError(
                    f"{place}: only {', '.join(INDEX_OPTIONS[:3])} options may be given with the "
                    "requirements; list each package by name (e.g. 'six==1.16.0')"
                )
            parsed.append(" ".join(text.split()))
            continue
        try:
            parsed.append(Requirement(text))
        except InvalidRequirement as exc:
            raise PackageError(
                f"{place} is not a valid requirement ({exc}); expected a name with an optional "
                "version, like 'six==1.16.0' or 'numpy>=1.24' (PEP 508)"
            ) from None
    return parsed


def _normal_form(line: Line) -> str:
    if isinstance(line, str):
        return line
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in line.extras))}]" if line.extras else ""
    text = f"{canonicalize_name(line.name)}{extras}"
    text += f" @ {line.url}" if line.url else str(line.specifier)
    return text + (f"; {line.marker}" if line.marker is not None else "")


def normalise_requirements(lines: list[str], where: str = "requirements", indexed: bool = True) -> list[str]:
    """Sorted, canonical requirement lines, with numpy added if absent (the worker needs it)."""
    parsed = parse_requirements(lines, where, indexed)
    normal = {_normal_form(line) for line in parsed}
    unconditional = {
        canonicalize_name(line.name) for line in parsed if isinstance(line, Requirement) and line.marker is None
    }
    if "numpy" not in unconditional:  # a numpy limited by a marker may not apply to this Python
        normal.add("numpy")
    return sorted(normal)


def _extra_requirements(distribution: str, extra: str) -> list[Requirement]:
    """The requirements an installed distribution adds for ``extra`` (their markers satisfied)."""
    found = []
    for text in importlib.metadata.requires(distribution) or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:  # metadata of an old package; pip would ignore it too
            continue
        marker = requirement.marker
        if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
            requirement.marker = None
            found.append(requirement)
    return found


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or of a variant of it that provides the same
    module (``xgboost`` installed as ``xgboost-cpu``); None when there is neither."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    wanted = canonicalize_name(name)
    for owner in importlib.metadata.packages_distributions().get(wanted.replace("-", "_"), []):
        if canonicalize_name(owner).startswith(f"{wanted}-"):
            return importlib.metadata.version(owner)
    return None


def unmet(requirement: Requirement, seen: set[str] | None = None) -> str | None:
    """Why the running environment does not satisfy ``requirement`` (with its extras), or None."""
    seen = set() if seen is None else seen
    try:
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            return None  # not for this platform or Python
    except UndefinedEnvironmentName:
        return None
    if requirement.url:
        return f"requires {requirement} (a direct reference, which the server's environment cannot vouch for)"
    installed = installed_version(requirement.name)
    if installed is None:
        return f"requires {requirement}, which the server does not have"
    if not requirement.specifier.contains(installed, prereleases=True):
        return f"requires {requirement}, the server has {installed}"
    for extra in sorted(requirement.extras):
        key = f"{canonicalize_name(requirement.name)}[{canonicalize_name(extra)}]"
        if key in seen:
            continue
        seen.add(key)
        for dependency in _extra_requirements(requirement.name, extra):
            reason = unmet(dependency, seen)
            if reason is not None:
                return f"{reason} (for {requirement.name}[{extra}])"
    return None


def _requirements_where(config: PackageConfig, folder: Path) -> tuple[str, bool]:
    """Where a package's requirements come from, for errors: its config's list, or a file."""
    if config.requirements is not None:
        return f"{folder / CONFIG_FILE}: requirements", True
    return str(folder / (config.requirements_file or REQUIREMENTS_FILE)), False


def needs_isolation(config: PackageConfig, folder: Path) -> str | None:
    """None when the model can run in the server's own environment, else the reason it cannot."""
    if config.isolate == "never":
        return None
    parsed = parse_requirements(requirements_of(config, folder), *_requirements_where(config, folder))
    if config.isolate == "always":
        return "isolate: always"
    if config.python_version is not None and config.python_version != RUNNING_PYTHON:
        return f"python_version {config.python_version} is asked for, the server runs {RUNNING_PYTHON}"
    for line in parsed:
        reason = unmet(line) if isinstance(line, Requirement) else None
        if reason is not None:
            return reason
    return None


def isolation_for(config: PackageConfig, folder: Path) -> Isolation | None:
    """What ``source.options["isolation"]`` holds for a package: None, or how to isolate it."""
    reason = needs_isolation(config, folder)
    if reason is None:
        return None
    requirements = normalise_requirements(requirements_of(config, folder), *_requirements_where(config, folder))
    return Isolation(
        reason=reason,
        environment=partial(ensure_environment, requirements, config.python_version),
        variables=dict(config.environment_variables),
        workdir=folder,
    )


# -- environments ----------------------------------------------------------------------------------
def environment_key(requirements: list[str], python_version: str | None = None) -> str:
    """The cache key of an environment: a hash of its normalised requirements, Python and protocol."""
    identity = {
        "requirements": normalise_requirements(requirements),
        "python": python_version or RUNNING_PYTHON,
        "protocol": WORKER_PROTOCOL,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def python_of(environment: Path) -> Path:
    return environment / "bin" / "python"


def ensure_environment(requirements: list[str], python_version: str | None = None) -> Path:
    """The python of an environment with ``requirements`` (built now unless cached); raises
    EnvironmentBuildError when the interpreter or the installer fails, leaving nothing behind."""
    version = python_version or RUNNING_PYTHON
    lines = normalise_requirements(requirements)
    root = environments_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / environment_key(requirements, python_version)
    with _locked(root / f"{target.name}.lock", target):
        if (target / META_FILE).is_file() and python_of(target).exists():
            _link_shipyard(target)
            log.info("using environment %s (cached)", target)
            return python_of(target)
        if target.exists():  # its interpreter is gone, or it predates the marker file
            log.warning("environment %s is broken; building it again", target)
            shutil.rmtree(target)
        for leftover in root.glob(f".build-{target.name}-*"):  # from a builder that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        interpreter = find_python(version)
        log.info("building environment %s: Python %s, %s", target, version, ", ".join(lines))
        started = time.monotonic()
        workspace = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=root))
        try:
            tool = _build(workspace, lines, interpreter)
            seconds = time.monotonic() - started
            meta = {"requirements": lines, "python": version, "interpreter": interpreter, "tool": tool,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 2)}
            (workspace / "env" / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            os.rename(workspace / "env", target)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
        log.info("built environment %s in %.1f s with %s", target, seconds, tool)
        return python_of(target)


@contextmanager
def _locked(path: Path, what: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (kept as an empty file) for the block."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building environment %s", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _link_shipyard(environment: Path) -> None:
    """Point the environment's ``shipyard`` link at this Shipyard (it may have moved since)."""
    folder = environment / LINK_FOLDER
    folder.mkdir(exist_ok=True)
    link = folder / "shipyard"
    if link.is_symlink() and os.readlink(link) == str(SHIPYARD_DIR):
        return
    temporary = folder / f".shipyard-{os.getpid()}"
    if temporary.is_symlink():
        temporary.unlink()
    temporary.symlink_to(SHIPYARD_DIR, target_is_directory=True)
    os.replace(temporary, link)


def _build(workspace: Path, lines: list[str], interpreter: str) -> str:
    """Create ``workspace/env`` and install ``lines`` into it; return the tool used."""
    environment = workspace / "env"
    requirements = workspace / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    uv = find_uv() if os.environ.get(INSTALLER_VARIABLE, "uv") != "pip" else None
    if uv is not None:
        tool = "uv"
        _run([uv, "venv", "--quiet", "--relocatable", "--no-python-downloads", "--python", interpreter,
              str(environment)], workspace, "creating the virtual environment", lines)
        _run([uv, "pip", "install", "--python", str(python_of(environment)), "-r", str(requirements)],
             workspace, "installing the requirements", lines)
    else:
        tool = "pip"
        _run([interpreter, "-m", "venv", str(environment)], workspace, "creating the virtual environment", lines)
        _run([str(python_of(environment)), "-m", "pip", "install", "--disable-pip-version-check", "-r",
              str(requirements)], workspace, "installing the requirements", lines)
    site_packages = sorted((environment / "lib").glob("python*/site-packages"))
    if len(site_packages) != 1:
        raise EnvironmentBuildError(f"{environment} has no single lib/python*/site-packages folder")
    # Relative to site-packages, so the environment keeps working after the rename.
    (site_packages[0] / PTH_FILE).write_text(f"../../../{LINK_FOLDER}\n")
    _link_shipyard(environment)
    return tool


def _run(command: list[str], cwd: Path, what: str, lines: list[str]) -> None:
    env = {key: value for key, value in os.environ.items() if key not in HIDDEN_VARIABLES}
    try:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=BUILD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(
            f"{what} ({', '.join(lines)}) took over {BUILD_TIMEOUT_SECONDS} s and was stopped"
        ) from None
    if done.returncode != 0:
        tail = "\n".join(line for line in done.stdout.strip().splitlines()[-ERROR_LINES:])
        raise EnvironmentBuildError(
            f"{what} ({', '.join(lines)}) failed with exit code {done.returncode}; "
            f"{Path(command[0]).name} said:\n{tail}"
        )


# -- tools and interpreters ------------------------------------------------------------------------
def find_uv() -> str | None:
    """The ``uv`` executable: the ``uv`` Python package's, else one on PATH, else None."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _version_of(interpreter: str) -> tuple[str | None, str]:
    """The ``X.Y`` version an interpreter reports, or None and the first line of its complaint."""
    try:
        done = subprocess.run([interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return None, lines[0] if lines else f"exit code {done.returncode}"
    return done.stdout.strip(), ""


def _pythons_on_path() -> list[str]:
    """Working ``python3.X`` interpreters on PATH, as "python3.X" names."""
    names: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names.update(p.name for p in Path(folder).iterdir() if re.fullmatch(r"python3\.\d+", p.name))
        except OSError:
            continue
    working = [name for name in names if _version_of(name)[0] == name.removeprefix("python")]
    return sorted(working, key=lambda name: int(name.split(".")[1]))


def find_python(version: str) -> str:
    """An interpreter of Python ``version`` ("3.11"): this one, ``python3.X`` on PATH, or one uv
    knows; EnvironmentBuildError says which was asked for and which exist."""
    if version == RUNNING_PYTHON:
        return sys.executable
    name = f"python{version}"
    candidate = shutil.which(name)
    problem = f"{name} is not on PATH"
    if candidate is not None:
        found, complaint = _version_of(candidate)
        if found == version:
            return candidate
        problem = f"{candidate} does not run ({complaint})" if found is None else f"{candidate} is Python {found}"
    uv = find_uv()
    if uv is not None:
        done = subprocess.run([uv, "python", "find", "--no-python-downloads", version],
                              capture_output=True, text=True, timeout=60)
        path = done.stdout.strip()
        if done.returncode == 0 and path and _version_of(path)[0] == version:
            return path
    available = _pythons_on_path()
    raise EnvironmentBuildError(
        f"python_version {version} is asked for, but no Python {version} was found ({problem}); "
        f"this machine has: {', '.join(available) or 'no python3.X on PATH'} (and Python {RUNNING_PYTHON}, "
        f"which runs the server). Install Python {version}, or change python_version"
    )
