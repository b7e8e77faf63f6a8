"""Deciding whether a package needs its own environment, the environments' cache key, and build errors.

Requirement checks run against real distribution metadata: a small ``.dist-info`` written to a
temporary folder on ``sys.path`` (so the versions and extras are known) and the venv's own numpy.
Builds that succeed need PyPI and are in tests/integration/test_isolated.py; the failures here
need no network (an empty local index, a Python that does not exist).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from shipyard.package.config import PackageError, parse_config
from shipyard.package.environment import (
    EnvironmentBuildError,
    environment_key,
    ensure_environment,
    environments_dir,
    isolation_for,
    needs_isolation,
    normalise_requirements,
    unmet,
)
from shipyard.runtimes.isolated import Isolation

RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
DIST = "shipyard-test-dist"


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Installed distributions: ``shipyard-test-dist`` 1.2.0 with three extras; ``shipyard-fake-cpu``
    2.0, a variant providing module ``shipyard_fake``; ``unrelated-owner`` 2.0 providing ``shipyard_other``."""
    info = tmp_path / "site" / "shipyard_test_dist-1.2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(textwrap.dedent("""\
        Metadata-Version: 2.1
        Name: shipyard-test-dist
        Version: 1.2.0
        Provides-Extra: fast
        Provides-Extra: missing
        Provides-Extra: old
        Requires-Dist: packaging
        Requires-Dist: numpy>=1.0; extra == "fast"
        Requires-Dist: shipyard-absent-dist>=1; extra == "missing"
        Requires-Dist: numpy<1; extra == "old"
    """))
    for name, module in (("shipyard-fake-cpu", "shipyard_fake"), ("unrelated-owner", "shipyard_other")):
        variant = tmp_path / "site" / f"{name.replace('-', '_')}-2.0.dist-info"
        variant.mkdir()
        (variant / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 2.0\n")
        (variant / "top_level.txt").write_text(f"{module}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return DIST


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def package(tmp_path: Path, config: dict, requirements_txt: str | None = None):
    folder = tmp_path / "pkg"
    folder.mkdir(exist_ok=True)
    if requirements_txt is not None:
        (folder / "requirements.txt").write_text(requirements_txt)
    parsed, _ = parse_config(config, str(folder / "shipyard.yaml"))
    return parsed, folder


# -- requirement satisfaction ----------------------------------------------------------------------
def test_installed_versions_satisfy_or_say_what_the_server_has(fake_dist):
    assert unmet(Requirement(f"{DIST}==1.2.0")) is None
    assert unmet(Requirement(f"{DIST}>=1,<2")) is None
    assert unmet(Requirement("Shipyard_Test.Dist~=1.2")) is None  # names compare normalised
    assert unmet(Requirement(f"{DIST}>=2")) == f"requires {DIST}>=2, the server has 1.2.0"
    assert unmet(Requirement("shipyard-absent-dist")) == "requires shipyard-absent-dist, which the server does not have"
    assert unmet(Requirement(f"numpy=={np.__version__}")) is None


def test_a_variant_distribution_of_the_same_module_counts(fake_dist):
    """``xgboost`` installed as ``xgboost-cpu``: the requirement is met by the variant's version."""
    assert unmet(Requirement("shipyard-fake>=2")) is None
    assert unmet(Requirement("shipyard_fake>=3")) == "requires shipyard_fake>=3, the server has 2.0"
    assert unmet(Requirement("shipyard-other")) == "requires shipyard-other, which the server does not have"


def test_markers_skip_requirements_that_do_not_apply_here(fake_dist):
    assert unmet(Requirement('shipyard-absent-dist; python_version < "3"')) is None
    assert unmet(Requirement(f'shipyard-absent-dist; sys_platform == "{sys.platform}"')) is not None
    assert unmet(Requirement(f'{DIST}>=2; python_version >= "3"')) == \
        f'requires {DIST}>=2; python_version >= "3", the server has 1.2.0'


def test_extras_check_what_each_extra_adds(fake_dist):
    assert unmet(Requirement(f"{DIST}[fast]")) is None
    assert unmet(Requirement(f"{DIST}[missing]")) == \
        f"requires shipyard-absent-dist>=1, which the server does not have (for {DIST}[missing])"
    assert unmet(Requirement(f"{DIST}[old]")) == \
        f"requires numpy<1, the server has {np.__version__} (for {DIST}[old])"
    assert unmet(Requirement(f"{DIST}[fast,old]")).endswith(f"(for {DIST}[old])")


def test_direct_references_are_not_vouched_for(fake_dist):
    assert "direct reference" in unmet(Requirement(f"{DIST} @ https://example.invalid/x.whl"))


# -- needs_isolation -------------------------------------------------------------------------------
def test_a_package_the_server_satisfies_runs_in_process(tmp_path, fake_dist):
    config, folder = package(tmp_path, {"requirements": [f"{DIST}>=1", "numpy"]})
    assert needs_isolation(config, folder) is None
    assert isolation_for(config, folder) is None


def test_an_unmet_requirement_is_the_reason(tmp_path, fake_dist):
    config, folder = package(tmp_path, {"requirements": ["numpy", f"{DIST}==1.0"]})
    assert needs_isolation(config, folder) == f"requires {DIST}==1.0, the server has 1.2.0"


def test_requirements_txt_is_read_when_the_key_is_absent(tmp_path, fake_dist):
    config, folder = package(tmp_path, {}, f"# pinned\n{DIST}==9.9  # too new\n\n")
    assert needs_isolation(config, folder) == f"requires {DIST}==9.9, the server has 1.2.0"


def test_isolate_never_and_always(tmp_path, fake_dist):
    config, folder = package(tmp_path, {"isolate": "never", "requirements": ["shipyard-absent-dist"]})
    assert needs_isolation(config, folder) is None
    config, folder = package(tmp_path, {"isolate": "always", "requirements": [f"{DIST}"]})
    assert needs_isolation(config, folder) == "isolate: always"


def test_another_python_version_isolates(tmp_path):
    other = "3.10" if RUNNING != "3.10" else "3.11"
    config, folder = package(tmp_path, {"python_version": other})
    assert needs_isolation(config, folder) == f"python_version {other} is asked for, the server runs {RUNNING}"
    config, folder = package(tmp_path, {"python_version": RUNNING})
    assert needs_isolation(config, folder) is None


def test_isolation_carries_the_environment_the_variables_and_the_folder(tmp_path, fake_dist, home):
    config, folder = package(tmp_path, {"requirements": [f"{DIST}==1.0"], "environment_variables": {"A": 1}})
    isolation = isolation_for(config, folder)
    assert isinstance(isolation, Isolation)
    assert isolation.variables == {"A": "1"} and isolation.workdir == folder
    assert callable(isolation.environment)
    assert not environments_dir().exists(), "nothing is built until the model loads"


@pytest.mark.parametrize("bad", ["six=1.0", "numpy>=", "-e .", "-r other.txt", "git+https://example.invalid/x.git"])
def test_a_bad_requirement_is_an_error_naming_it(tmp_path, bad):
    config, folder = package(tmp_path, {"requirements": ["numpy", bad]})
    with pytest.raises(PackageError) as error:
        needs_isolation(config, folder)
    message = str(error.value)
    assert str(folder / "shipyard.yaml") in message and "requirements[1]" in message and repr(bad) in message


def test_a_bad_line_in_requirements_txt_names_the_file(tmp_path):
    config, folder = package(tmp_path, {}, "numpy\nsix=1.0  # a typo\n")
    with pytest.raises(PackageError, match=r"pkg/requirements\.txt: 'six=1\.0' is not a valid requirement"):
        needs_isolation(config, folder)


def test_index_options_are_allowed(tmp_path, fake_dist):
    config, folder = package(tmp_path, {"requirements": ["--index-url https://example.invalid/simple", f"{DIST}==1.0"]})
    assert needs_isolation(config, folder) == f"requires {DIST}==1.0, the server has 1.2.0"


# -- the cache key ---------------------------------------------------------------------------------
def test_the_key_ignores_order_case_spacing_and_duplicates():
    key = environment_key(["six==1.15.0", "Inflection >= 0.5"])
    assert key == environment_key(["inflection>=0.5", "six == 1.15.0", "six==1.15.0"])
    assert key == environment_key(["inflection>=0.5", "six==1.15.0", "numpy"])  # numpy is always there
    assert key != environment_key(["six==1.16.0", "inflection>=0.5"])
    assert key != environment_key(["six==1.15.0", "inflection>=0.5"], "3.99")
    assert environment_key(["six"], RUNNING) == environment_key(["six"])


def test_the_key_is_the_same_in_another_process():
    code = "from shipyard.package.environment import environment_key as k; print(k(['six==1.15.0', 'b[x,y]>1']))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {environment_key(["B[y,x] > 1", "six==1.15.0"])}


def test_numpy_is_added_unless_required_without_a_marker():
    assert normalise_requirements(["six"]) == ["numpy", "six"]
    assert normalise_requirements(["numpy<2", "six"]) == ["numpy<2", "six"]
    assert normalise_requirements(['numpy<2; python_version < "3.13"']) == ['numpy', 'numpy<2; python_version < "3.13"']


# -- building: failures leave nothing behind ---------------------------------------------------------
def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "envs").iterdir() if not p.name.endswith(".lock"))


def test_a_python_that_is_not_here_is_a_clear_error(home):
    with pytest.raises(EnvironmentBuildError) as error:
        ensure_environment(["six"], "3.99")
    message = str(error.value)
    assert "python_version 3.99 is asked for" in message and "python3.99 is not on PATH" in message
    assert f"Python {RUNNING}, which runs the server" in message
    assert leftovers(home) == []


def test_a_failed_install_quotes_the_installer_and_leaves_nothing(home, tmp_path):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    requirements = [f"--index-url {empty_index.as_uri()}", "shipyard-absent-dist==1.0"]
    killed_builder = home / "envs" / f".build-{environment_key(requirements)}-x1y2"
    (killed_builder / "env").mkdir(parents=True)  # what a builder killed mid-way leaves
    with pytest.raises(EnvironmentBuildError) as error:
        ensure_environment(requirements)
    message = str(error.value)
    assert message.startswith("installing the requirements (")
    assert "shipyard-absent-dist" in message.split("said:", 1)[1], "the installer's own words are quoted"
    assert leftovers(home) == []


def test_a_second_builder_waits_for_the_lock(home, tmp_path, caplog):
    """Two servers building the same environment: the second waits for the first's lock."""
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    requirements = [f"--index-url {empty_index.as_uri()}", "shipyard-absent-dist==1.0"]
    (home / "envs").mkdir(parents=True)
    lock = home / "envs" / f"{environment_key(requirements)}.lock"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            ensure_environment(requirements)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="shipyard.package.environment"), open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        builder = threading.Thread(target=build)
        builder.start()
        deadline = time.monotonic() + 30
        while "waiting for another process" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "waiting for another process" in caplog.text
        assert builder.is_alive() and not built(caplog)
        fcntl.flock(held, fcntl.LOCK_UN)
        builder.join(60)
    assert not builder.is_alive() and len(errors) == 1 and isinstance(errors[0], EnvironmentBuildError)
    assert built(caplog), "it went on once the lock was free"


def built(caplog: pytest.LogCaptureFixture) -> bool:
    return any(record.getMessage().startswith("building environment") for record in caplog.records)
