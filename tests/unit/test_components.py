"""An InferenceService's transformer and explainer: keys, stand-in resources, routing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.control.components import (
    component_key,
    component_resource,
    predictor_host,
    present,
    revision_prefix,
    split_key,
)
from shipyard.control.gateway.routing import RouteTableError, Router
from shipyard.control.model_source import ModelSourceError, serve_command
from shipyard.control.resources import Resource
from shipyard.control.store import Store
from shipyard.control.validation import ValidationError, validate


def table(isvc: str, component: str | None = None, revision: str = "r1") -> dict:
    raw = {"isvc": isvc, "namespace": "default", "backends": [
        {"revision": revision, "percent": 100, "replicas": [{"http": "http://127.0.0.1:1", "grpc": None}]}]}
    if component:
        raw["component"] = component
    return raw


def test_keys_and_revision_names(tmp_path: Path) -> None:
    assert component_key("iris", "predictor") == "iris"
    assert component_key("iris", "transformer") == "iris:transformer"
    assert split_key("iris:explainer") == ("iris", "explainer") and split_key("iris") == ("iris", "predictor")
    assert revision_prefix("iris:transformer") == "iris-transformer" and revision_prefix("iris") == "iris-predictor"
    assert predictor_host("iris", "ml", "example.com") == "iris-predictor.ml.example.com"
    store = Store(tmp_path / "state.db")
    assert store.add_revision("default", "iris:transformer", "f1", {}, 1).name == "iris-transformer-00001"
    assert store.add_revision("default", "iris", "f1", {}, 1).name == "iris-predictor-00001"
    store.event("InferenceService", "default", "iris:transformer", "Normal", "X", "a transformer's event")
    assert [e.message for e in store.events("InferenceService", "default", "iris")] == ["a transformer's event"]


def test_a_stand_in_resource_carries_the_component_as_its_predictor() -> None:
    service = Resource("serving.kserve.io/v1beta1", "InferenceService", "iris", spec={
        "predictor": {"model": {"modelFormat": {"name": "sklearn"}}},
        "transformer": {"model": {"modelFormat": {"name": "custom"}}, "minReplicas": 2}},
        annotations={"serving.shipyard.io/pinned-revision": "iris-predictor-00001", "team": "ml"},
        status={"components": {"transformer": {"latestReadyRevision": "iris-transformer-00003"}}})
    assert present(service) == ["predictor", "transformer"]
    part = component_resource(service, "transformer")
    assert part.name == "iris:transformer" and part.spec == {"predictor": service.spec["transformer"]}
    assert part.annotations == {"team": "ml"}  # a pin names predictor revisions
    assert part.status == {"components": {"predictor": {"latestReadyRevision": "iris-transformer-00003"}}}
    assert service.name == "iris" and "transformer" in service.spec  # the service itself is untouched


def test_the_gateway_sends_requests_to_the_entry_component() -> None:
    router = Router()
    assert router.update({("default", "iris"): table("iris"),
                          ("default", "iris:transformer"): table("iris:transformer", "transformer", "t1"),
                          ("default", "plain"): table("plain")}) == []
    assert router.find("iris").component == "transformer"
    assert router.find("iris", explain=True).component == "transformer"  # no explainer: the transformer
    assert router.find("plain").isvc == "plain"
    hit = router.by_host("iris-predictor.default.example.com")
    assert hit is not None and hit[0].isvc == "iris"
    hit = router.by_host("iris.default.example.com")
    assert hit is not None and hit[0].component == "transformer"
    router.update({("default", "iris"): table("iris"),
                   ("default", "iris:transformer"): table("iris:transformer", "transformer"),
                   ("default", "iris:explainer"): table("iris:explainer", "explainer")})
    assert router.find("iris", explain=True).component == "explainer"
    assert router.find("iris").component == "transformer"
    with pytest.raises(Exception, match="not served; namespace 'default' serves iris"):
        router.find("iris:transformer")  # a component key is not a model name


def test_a_route_table_must_agree_with_its_key() -> None:
    router = Router()
    problems = router.update({("default", "iris:transformer"): table("iris:transformer", "explainer")})
    assert problems and "'component' is 'explainer'" in problems[0]
    with pytest.raises(RouteTableError):
        from shipyard.control.gateway.routing import RouteTable

        RouteTable.parse(("default", "iris"), table("iris", "transformer"))


def _service(tmp_path: Path, **components: dict) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "model.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "iris"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "custom"}, "storageUri": str(model)}},
                     **components}}


def test_validation_names_each_bad_component_field(tmp_path: Path) -> None:
    document = _service(tmp_path, transformer={"containers": [{"name": "c", "image": "me/t"}], "minReplicas": -1},
                        explainer={"art": {"type": "SquareAttack"}})
    with pytest.raises(ValidationError) as raised:
        validate(document)
    by_path = {error.path: error.message for error in raised.value.errors}
    assert "container images are not run locally" in by_path["spec.transformer.containers"]
    assert "ART explainers are not available" in by_path["spec.explainer.art"]
    assert by_path["spec.transformer.minReplicas"] == "-1 is less than the minimum of 0"

    document = _service(tmp_path, transformer={"model": {"modelFormat": {"name": "sklearn"},
                                                         "storageUri": str(tmp_path / "missing")}})
    with pytest.raises(ValidationError) as raised:
        validate(document)
    by_path = {error.path: error.message for error in raised.value.errors}
    assert by_path["spec.transformer.model.modelFormat.name"] == "'sklearn' is not a transformer format; expected custom"
    assert "does not exist" in by_path["spec.transformer.model.storageUri"]


def test_a_valid_transformer_is_accepted_without_warnings(tmp_path: Path) -> None:
    document = _service(tmp_path, transformer={"model": {"modelFormat": {"name": "custom"},
                                                         "storageUri": str(tmp_path / "model")}, "minReplicas": 1})
    validated = validate(document)
    assert validated.warnings == []
    assert validated.resource.spec["transformer"]["minReplicas"] == 1


def test_a_transformer_replica_is_served_under_its_service_name(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "model.py").write_text("class Model:\n    def preprocess(self, x):\n        return x\n")
    command = serve_command("iris:transformer", {"model": {"modelFormat": {"name": "custom"},
                                                           "storageUri": str(folder)}})
    assert command.argv[:3] == [str(folder), "--name", "iris"]
    assert command.env["OTEL_SERVICE_NAME"] == "iris-transformer"
    with pytest.raises(ModelSourceError, match=r"spec.explainer.model.modelFormat.name: 'sklearn' is not served"):
        serve_command("iris:explainer", {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(folder)}})
