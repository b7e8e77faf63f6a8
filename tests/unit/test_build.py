"""``shipyard build``: the Dockerfile, requirements, KServe manifests (checked against the CRD schemas) and OUT handling."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from shipyard.package.build import BuildOptions, build_context, image_reference, plan_build
from shipyard.package.build_plan import BuildError
from shipyard.package.config import PackageError
from shipyard.package.image import render_dockerfile, render_requirements
from shipyard.package.manifests import inference_service, kubernetes_name, serving_runtime

CRDS = Path(__file__).resolve().parents[2].parent / "shared" / "crds"
SECRET_VALUE = "s3cr3t-value-never-in-the-image"


@pytest.fixture(autouse=True)
def shipyard_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))


def make_package(folder: Path, artifact: Path, config: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(artifact.read_bytes())
    (folder / "shipyard.yaml").write_text(config)
    return folder


@pytest.fixture
def iris_package(tmp_path, artifacts) -> Path:
    return make_package(tmp_path / "iris", artifacts["sk_logreg"], "name: iris\nformat: sklearn\nartifact: model.joblib\n")


def kserve_schema(file: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of a KServe CRD version, with Kubernetes' rules made explicit for jsonschema."""
    if not (CRDS / file).is_file():
        pytest.skip(f"the upstream CRD schemas are not at {CRDS} (a clone without the shared workspace next to it)")
    return _schema(file, version)


@functools.lru_cache(maxsize=None)
def _schema(file: str, version: str) -> dict[str, Any]:
    crd = yaml.load((CRDS / file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 40k lines
    found = [entry for entry in crd["spec"]["versions"] if entry["name"] == version]
    assert found, f"{file} has no version {version}"
    return kubernetes_rules(found[0]["schema"]["openAPIV3Schema"])


def kubernetes_rules(node: Any) -> Any:
    """``x-kubernetes-int-or-string`` allows an integer or a string; an object with ``properties`` rejects
    other fields, as the API server's strict field validation does (unless it preserves unknown fields)."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        node["properties"] = {key: kubernetes_rules(value) for key, value in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = kubernetes_rules(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [kubernetes_rules(choice) for choice in node[key]]
    return node


def validate(document: dict[str, Any]) -> None:
    kind = document["kind"]
    file, version = {"ServingRuntime": ("serving.kserve.io_servingruntimes.yaml", "v1alpha1"),
                     "InferenceService": ("serving.kserve.io_inferenceservices.yaml", "v1beta1")}[kind]
    assert document["apiVersion"] == f"serving.kserve.io/{version}"
    jsonschema.Draft7Validator(kserve_schema(file, version)).validate(document)


GPU_CONFIG = """\
name: Fraud_Detector.v2
format: sklearn
artifact: model.joblib
version: 2024.1
environment_variables: {LOG_LEVEL: debug, TEMPLATE: "$(HOME)/x"}
secrets: [API_TOKEN, DB_PASSWORD]
resources: {cpu: 500m, memory: 4Gi, gpu: 2}
"""


@pytest.mark.parametrize("config, options", [
    ("name: iris\nformat: sklearn\nartifact: model.joblib\n", BuildOptions()),
    (GPU_CONFIG, BuildOptions(registry="ghcr.io/acme", storage_uri="s3://models/fraud")),
], ids=["baked-cpu", "storage-uri-gpu-secrets"])
def test_manifests_are_valid_kserve_resources(tmp_path, artifacts, config, options):
    plan = plan_build(make_package(tmp_path / "pkg", artifacts["sk_logreg"], config), options)
    runtime, service = serving_runtime(plan), inference_service(plan)
    validate(runtime)
    validate(service)
    container = runtime["spec"]["containers"][0]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"] == "sklearn"
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2", "grpc-v2"}
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", 8080), ("h2c", 8081)]
    assert container["image"] == plan.image
    if options.storage_uri:
        assert model["storageUri"] == "s3://models/fraud" and "/mnt/models" in container["args"]
        assert service["metadata"]["name"] == "fraud-detector-v2" and container["image"] == "ghcr.io/acme/fraud-detector-v2:2024.1"
        assert container["args"][container["args"].index("--name") + 1] == "Fraud_Detector.v2"
        assert model["resources"]["limits"] == {"cpu": "500m", "memory": "4Gi", "nvidia.com/gpu": 2}
        env = {entry["name"]: entry for entry in model["env"]}
        assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "fraud-detector-v2-secrets", "key": "API_TOKEN"}
        assert env["TEMPLATE"]["value"] == "$$(HOME)/x"  # not expanded by Kubernetes
    else:
        assert "storageUri" not in model and "/models/iris" in container["args"]
        assert model["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"} and "env" not in model


def test_a_model_py_package_is_a_custom_kserve_format(tmp_path, artifacts):
    package = tmp_path / "echo"
    package.mkdir()
    (package / "model.py").write_text((artifacts["echo"] / "model.py").read_text())
    (package / "shipyard.yaml").write_text("name: echo\n")
    plan = plan_build(package)
    runtime, service = serving_runtime(plan), inference_service(plan)
    validate(runtime)
    validate(service)
    assert service["spec"]["predictor"]["model"]["modelFormat"] == {"name": "custom"}
    assert runtime["spec"]["supportedModelFormats"] == [{"name": "custom", "autoSelect": False}]


def test_the_validator_rejects_wrong_types_and_unknown_fields(iris_package):
    plan = plan_build(iris_package)
    runtime = serving_runtime(plan)
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(jsonschema.ValidationError, match="'eighty' is not of type 'integer'"):
        validate(runtime)
    service = inference_service(plan)
    service["spec"]["predictor"]["model"]["protocolVersions"] = "v2"  # misspelt: the field is protocolVersion
    with pytest.raises(jsonschema.ValidationError, match="protocolVersions"):
        validate(service)
    service = inference_service(plan)
    service["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 1.5  # a float is neither int nor string
    with pytest.raises(jsonschema.ValidationError):
        validate(service)


def test_build_writes_a_complete_context(iris_package, tmp_path):
    (iris_package / "__pycache__").mkdir()
    (iris_package / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (iris_package / "notes.txt").write_text("kept")
    out = tmp_path / "out"
    result = build_context(iris_package, out)
    assert result.out == out.resolve() and result.warnings == []
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    wheel = result.shipyard_requirement
    assert wheel.startswith("./wheels/shipyard-") and wheel.endswith(".whl")  # this checkout runs editable
    assert files == sorted([".dockerignore", "Dockerfile", "README.md", "requirements.txt", wheel[2:],
                            "kubernetes/inferenceservice.yaml", "kubernetes/servingruntime.yaml",
                            "models/iris/model.joblib", "models/iris/notes.txt", "models/iris/shipyard.yaml"])
    assert (out / "models/iris/model.joblib").read_bytes() == (iris_package / "model.joblib").read_bytes()
    for manifest in ("servingruntime", "inferenceservice"):
        validate(yaml.safe_load((out / "kubernetes" / f"{manifest}.yaml").read_text()))
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert wheel in requirements
    for distribution in ("scikit-learn", "joblib", "numpy", "msgspec"):
        assert f"{distribution}=={importlib.metadata.version(distribution).split('+')[0]}" in requirements
    assert not any("download.pytorch.org" in line for line in requirements)
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY wheels/ ./wheels/" in dockerfile
    readme = (out / "README.md").read_text()
    for command in ("docker build -t iris:1 .", "docker run --rm -p 8080:8080 -p 8081:8081 iris:1",
                    "docker push REGISTRY/iris:1", "kubectl apply -f kubernetes/servingruntime.yaml",
                    "kubectl apply -f kubernetes/inferenceservice.yaml"):
        assert command in readme
    assert not list(tmp_path.glob(".out.*")), "no temporary folder is left next to OUT"


def instruction_index(lines: list[str], prefix: str) -> int:
    return next(index for index, line in enumerate(lines) if line.startswith(prefix))


def test_dockerfile_for_cpu(tmp_path, artifacts):
    config = ("name: iris\nformat: sklearn\nartifact: model.joblib\npython_version: '3.11'\n"
              "system_packages: [libpq5, tesseract-ocr]\nenvironment_variables: {GREETING: 'say \"hi\" for $5'}\n"
              "resources: {cpu: '2'}\n")
    plan = plan_build(make_package(tmp_path / "pkg", artifacts["sk_logreg"], config))
    text = render_dockerfile(plan, wheel=False, weights=False)
    lines = text.splitlines()
    assert lines[instruction_index(lines, "FROM")] == "FROM python:3.11-slim"
    assert "apt-get install -y --no-install-recommends libpq5 tesseract-ocr" in text
    assert "rm -rf /var/lib/apt/lists/*" in text
    pip = instruction_index(lines, "RUN pip install -r requirements.txt")
    assert instruction_index(lines, "COPY requirements.txt") < pip < instruction_index(lines, "COPY models/iris/ /models/iris/")
    assert "COPY wheels/" not in text and "weights/" not in text
    assert 'GREETING="say \\"hi\\" for \\$5"' in text  # quotes escaped, no variable expansion
    user = lines[instruction_index(lines, "USER")]
    assert user == "USER 10001" and instruction_index(lines, "USER") < instruction_index(lines, "ENTRYPOINT")
    assert "EXPOSE 8080 8081" in lines
    healthcheck = lines[instruction_index(lines, "HEALTHCHECK") + 1].strip()
    command = json.loads(healthcheck.removeprefix("CMD "))
    assert command[:2] == ["python", "-c"] and "/v2/health/ready" in command[2] and "urllib" in command[2]
    entry = json.loads(lines[instruction_index(lines, "ENTRYPOINT")].removeprefix("ENTRYPOINT "))
    assert entry == ["shipyard", "serve", "/models/iris", "--host", "0.0.0.0", "--http-port", "8080",
                     "--grpc-port", "8081", "--workers", "2"]
    assert "nvidia" not in text and "download.pytorch.org" not in render_requirements(plan, "shipyard==0.1.0")


@pytest.mark.parametrize("python, ppa", [("3.12", True), ("3.10", False)])
def test_dockerfile_for_gpu(tmp_path, artifacts, python, ppa):
    config = f"format: sklearn\nartifact: model.joblib\npython_version: '{python}'\nresources: {{gpu: 1}}\n"
    plan = plan_build(make_package(tmp_path / "gpu", artifacts["sk_logreg"], config))
    text = render_dockerfile(plan, wheel=True, weights=False)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("FROM")] == ["FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04"]
    assert f"python{python} python{python}-venv" in text and f"RUN python{python} -m venv /opt/venv" in text
    assert ("ppa:deadsnakes/ppa" in text) is ppa
    assert "COPY wheels/ ./wheels/" in text
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert any(warning.startswith("the pins come from this Python") for warning in plan.warnings) == (python != running)


def test_torch_uses_cpu_wheels_without_a_gpu_and_gpu_libraries_with_one(tmp_path):
    def plan_for(name: str, config: str):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"PK\x03\x04 not read by plan_build")
        (folder / "model.onnx").write_bytes(b"\x08\x07 not read either")
        (folder / "shipyard.yaml").write_text(config)
        return plan_build(folder)

    torch_version = importlib.metadata.version("torch").split("+")[0]
    cpu = plan_for("cpu", "format: pytorch\nartifact: model.pt\n")
    text = render_requirements(cpu, "shipyard==0.1.0")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert f"torch=={torch_version}" in text.splitlines()
    gpu = plan_for("gpu", "format: pytorch\nartifact: model.pt\nresources: {gpu: 1}\n")
    assert "download.pytorch.org" not in render_requirements(gpu, "shipyard==0.1.0")
    onnx = plan_for("onnx", "format: onnx\nartifact: model.onnx\nresources: {gpu: 1}\n")
    version = importlib.metadata.version("onnxruntime")
    assert f"onnxruntime-gpu=={version}" in onnx.requirements and f"onnxruntime=={version}" not in onnx.requirements


def test_the_package_requirements_win_over_the_pins(tmp_path, artifacts):
    config = "format: sklearn\nartifact: model.joblib\nrequirements: ['scikit-learn==1.5.2', 'pandas>=2', 'shipyard']\n"
    plan = plan_build(make_package(tmp_path / "pkg", artifacts["sk_logreg"], config))
    assert "scikit-learn==1.5.2" in plan.requirements and "pandas>=2" in plan.requirements
    assert not any(line.startswith("scikit-learn==") and line != "scikit-learn==1.5.2" for line in plan.requirements)
    assert "shipyard" not in plan.requirements
    assert any("scikit-learn==1.5.2" in warning and "instead of" in warning for warning in plan.warnings)
    assert any("'shipyard' is left out" in warning for warning in plan.warnings)


def test_secret_values_are_never_written(tmp_path, artifacts, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET_VALUE)
    config = "name: iris\nformat: sklearn\nartifact: model.joblib\nsecrets: [API_TOKEN]\n"
    package = make_package(tmp_path / "pkg", artifacts["sk_logreg"], config)
    (package / ".env").write_text(f"API_TOKEN={SECRET_VALUE}\n")
    (package / "secrets").mkdir()
    (package / "secrets" / "API_TOKEN").write_text(SECRET_VALUE)
    out = tmp_path / "out"
    build_context(package, out)
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), f"{path} holds the secret's value"
    assert not (out / "models/iris/.env").exists() and not (out / "models/iris/secrets").exists()
    dockerfile = (out / "Dockerfile").read_text()
    assert "API_TOKEN: -e API_TOKEN=... or mount /run/secrets/API_TOKEN" in dockerfile
    assert "ENV API_TOKEN" not in dockerfile
    readme = (out / "README.md").read_text()
    assert "-e API_TOKEN=..." in readme and "kubectl create secret generic iris-secrets" in readme


def test_out_must_be_empty_unless_forced_and_is_replaced_whole(iris_package, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("do not lose me")
    with pytest.raises(BuildError, match="is not empty; pass --force"):
        build_context(iris_package, out)
    assert (out / "mine.txt").read_text() == "do not lose me"
    build_context(iris_package, out, BuildOptions(force=True))
    assert not (out / "mine.txt").exists() and (out / "Dockerfile").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    build_context(iris_package, empty)  # an empty OUT needs no --force
    assert (empty / "Dockerfile").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "iris", "out"]  # nothing left aside


@pytest.mark.parametrize("config, options, message", [
    ("format: sklearn\nresources: {cpu: lots}\n", BuildOptions(), r"resources\.cpu = 'lots'"),
    ("format: sklearn\nartifact: model.joblib\nsystem_packages: ['curl; rm -rf /']\n", BuildOptions(),
     r"system_packages\[0\] = 'curl; rm -rf /': not a Debian package name"),
    ("format: sklearn\nartifact: model.joblib\nenvironment_variables: {NOTE: \"a\\nb\"}\n", BuildOptions(),
     r"environment_variables\.NOTE: a value on several lines"),
    ("format: sklearn\nartifact: model.joblib\nenvironment_variables: {API_TOKEN: x}\nsecrets: [API_TOKEN]\n",
     BuildOptions(), "both in environment_variables and in secrets"),
    ("format: sklearn\nartifact: model.joblib\nweights: [{uri: 'file:///nonexistent/w.bin'}]\n", BuildOptions(),
     "cannot fetch file:///nonexistent/w.bin"),
    ("format: sklearn\nartifact: model.joblib\n", BuildOptions(image="Iris:1"), "--image 'Iris:1' is not a valid image"),
    ("format: sklearn\nartifact: model.joblib\n", BuildOptions(registry="https://ghcr.io"), "--registry"),
    ("format: sklearn\nartifact: model.joblib\n", BuildOptions(storage_uri="models/iris"), "--storage-uri 'models/iris'"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, artifacts, config, options, message):
    package = make_package(tmp_path / "pkg", artifacts["sk_logreg"], config)
    out = tmp_path / "build" / "out"
    with pytest.raises((BuildError, PackageError), match=message):
        build_context(package, out, options)
    assert not (tmp_path / "build").exists()


def test_a_failure_while_writing_leaves_no_trace(iris_package, tmp_path):
    (iris_package / "dangling").symlink_to(tmp_path / "missing-file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous build")
    with pytest.raises(BuildError, match="cannot copy the package"):
        build_context(iris_package, out, BuildOptions(force=True))
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old OUT is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris", "out"]  # and no temporary folder is left


def test_out_inside_the_package_is_not_copied_into_itself(iris_package, tmp_path):
    out = iris_package / "build"
    build_context(iris_package, out)
    build_context(iris_package, out, BuildOptions(force=True))
    assert sorted(p.name for p in (out / "models" / "iris").iterdir()) == ["model.joblib", "shipyard.yaml"]
    with pytest.raises(BuildError, match="holds the package folder"):
        build_context(iris_package, tmp_path, BuildOptions(force=True))
    assert (iris_package / "model.joblib").is_file()


def test_weights_are_baked_where_the_image_looks_for_them(tmp_path, artifacts):
    weight = tmp_path / "scale.bin"
    weight.write_bytes(b"\x00weights" * 100)
    config = f"name: iris\nformat: sklearn\nartifact: model.joblib\nweights: [{{uri: '{weight.as_uri()}'}}]\n"
    package = make_package(tmp_path / "pkg", artifacts["sk_logreg"], config)
    out = tmp_path / "out"
    build_context(package, out)
    link = out / "models/iris/data/scale.bin"
    assert link.is_symlink()
    target = Path(str(link.readlink()))
    assert str(target).startswith("/home/shipyard/.shipyard/cache/weights/")
    baked = out / "weights" / target.relative_to("/home/shipyard/.shipyard/cache/weights")
    assert baked.read_bytes() == weight.read_bytes()
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY --chown=10001:10001 weights/ /home/shipyard/.shipyard/cache/weights/" in dockerfile
    assert "ENV SHIPYARD_HOME=/home/shipyard/.shipyard" in dockerfile


@pytest.mark.parametrize("name, expected", [("iris", "iris"), ("Fraud_Detector.v2", "fraud-detector-v2"),
                                            ("2024-model", "model-2024-model")])
def test_kubernetes_names(name, expected):
    assert kubernetes_name(name) == expected
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", expected)


def test_image_references():
    assert image_reference(None, None, "iris", "1.2") == "iris:1.2"
    assert image_reference("team/iris", "ghcr.io/acme/", "iris", "3") == "ghcr.io/acme/team/iris:3"
    assert image_reference("iris:latest", "localhost:5000", "iris", "3") == "localhost:5000/iris:latest"
    assert image_reference(None, None, "iris", "v1+build/7") == "iris:v1-build-7"
    with pytest.raises(BuildError, match="--image 'iris:bad tag'"):
        image_reference("iris:bad tag", None, "iris", "1")


def run_cli(*args: str):
    import typer

    from shipyard.cli.build import build

    app = typer.Typer()
    app.command()(build)
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_cli_errors_are_clear(iris_package, tmp_path):
    result = run_cli(tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "package folder" in result.stderr and "does not exist" in result.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    result = run_cli(bare, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "has no shipyard.yaml" in result.stderr
    assert "shipyard init" in result.stderr and "shipyard package" in result.stderr
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep").write_text("x")
    result = run_cli(iris_package, "--out", out)
    assert result.exit_code == 1 and "not empty; pass --force" in result.stderr
    assert not (tmp_path / "out").exists() and (out / "keep").exists()
    result = run_cli(iris_package)
    assert result.exit_code == 2 and "--out" in result.stderr


def test_cli_builds_and_says_what_next(iris_package, tmp_path):
    out = tmp_path / "out"
    result = run_cli(iris_package, "--out", out, "--registry", "ghcr.io/acme")
    assert result.exit_code == 0, result.stderr
    assert "ghcr.io/acme/iris:1" in result.stdout and f"docker build -t ghcr.io/acme/iris:1 {out}" in result.stdout
    assert (out / "Dockerfile").is_file()
    assert "docker push ghcr.io/acme/iris:1" in (out / "README.md").read_text()
