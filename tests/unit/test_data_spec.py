"""Dataset configs from Fluid documents: defaults, tiers, options, secrets and the errors naming fields."""

from __future__ import annotations

import copy
import json

import pytest

from shipyard.data.sources import SourceError, Sources, nest_options, resolve_secret, storage_options, version_of
from shipyard.data.spec import (
    DataSpecError,
    DatasetConfig,
    DatasetNotFound,
    Mount,
    SecretRef,
    memory_tier_path,
)

DATASET = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "imagenet", "namespace": "team-a"},
    "spec": {
        "sharedOptions": {"anon": "false", "client_kwargs.region_name": "eu-west-1"},
        "sharedEncryptOptions": [{"name": "key", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}}}],
        "mounts": [
            {"mountPoint": "s3://bucket/train", "name": "train", "options": {"anon": "true"},
             "encryptOptions": [{"name": "secret",
                                 "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}}]},
            {"mountPoint": "local:///data/labels", "readOnly": True},
        ],
    },
}

RUNTIME = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "CacheRuntime",
    "metadata": {"name": "imagenet", "namespace": "team-a"},
    "spec": {
        "runtimeClassName": "shipyard",
        "options": {"blockSize": "1Mi", "evictionPolicy": "lru", "metadataTTL": "5m", "verifyReads": "false"},
        "worker": {"tieredStore": {"levels": [
            {"hostPath": {"paths": ["/mnt/ssd1", "/mnt/ssd2"], "quotas": ["20Gi", "10Gi"]}, "high": "0.9", "low": "0.5"},
            {"processMemory": {"quota": "2Gi"}},
        ]}},
    },
}


def test_dataset_defaults_and_mounts(tmp_path):
    config = DatasetConfig.from_documents(DATASET, None, home=tmp_path)
    assert (config.namespace, config.name) == ("team-a", "imagenet")
    assert config.root == tmp_path / "data" / "team-a" / "imagenet"
    train, labels = config.mounts
    assert (train.name, train.path, train.read_only) == ("train", "/train", False)
    # the mount's own options win over sharedOptions; shared ones are kept
    assert train.options == {"anon": "true", "client_kwargs.region_name": "eu-west-1"}
    assert train.encrypt_options == [SecretRef("key", "s3-creds", "id"), SecretRef("secret", "s3-creds", "secret")]
    assert labels.mount_point == "file:///data/labels"        # local:// means file://
    assert (labels.name, labels.path, labels.read_only) == ("labels", "/labels", True)
    # no runtime: one SSD level of 10 GiB under the dataset's root
    (level,) = config.cache.levels
    assert (level.medium, level.path, level.quota, level.high, level.low) == (
        "SSD", str(config.root / "cache"), 10 * 1024**3, 0.95, 0.70)
    assert (config.cache.block_size, config.cache.eviction, config.cache.metadata_ttl_s,
            config.cache.verify_reads) == (4 * 1024**2, "scan-resistant", 300.0, True)


def test_runtime_levels_and_options(tmp_path):
    config = DatasetConfig.from_documents(DATASET, RUNTIME, home=tmp_path)
    mem, ssd1, ssd2 = config.cache.levels              # MEM first whatever the document's order
    assert (mem.medium, mem.path, mem.quota) == ("MEM", memory_tier_path("imagenet", "team-a"), 2 * 1024**3)
    assert (ssd1.path, ssd1.quota, ssd1.high, ssd1.low) == ("/mnt/ssd1", 20 * 1024**3, 0.9, 0.5)
    assert (ssd2.path, ssd2.quota) == ("/mnt/ssd2", 10 * 1024**3)
    assert (config.cache.block_size, config.cache.eviction, config.cache.metadata_ttl_s,
            config.cache.verify_reads) == (1024**2, "lru", 300.0, False)
    client = copy.deepcopy(RUNTIME)
    client["spec"]["client"] = client["spec"].pop("worker")
    client["spec"]["client"]["tieredStore"]["levels"] = [{"emptyDir": {"medium": "Memory", "quota": "64Mi"}},
                                                         {"emptyDir": {"quota": "1Gi"}}]
    config = DatasetConfig.from_documents(DATASET, client, home=tmp_path)
    assert [(lv.medium, lv.quota) for lv in config.cache.levels] == [("MEM", 64 * 1024**2), ("SSD", 1024**3)]
    assert config.cache.levels[1].path == str(config.root / "cache")
    shared = copy.deepcopy(RUNTIME)
    shared["spec"]["worker"]["tieredStore"]["levels"][0]["hostPath"]["quotas"] = ["30Gi"]
    config = DatasetConfig.from_documents(DATASET, shared, home=tmp_path)
    assert [lv.quota for lv in config.cache.levels[1:]] == [15 * 1024**3, 15 * 1024**3]   # shared evenly


def test_save_load_roundtrip_is_atomic_and_has_no_secret_values(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET", "do-not-store")
    config = DatasetConfig.from_documents(DATASET, RUNTIME, home=tmp_path)
    path = config.save()
    assert path == config.root / "dataset.json"
    assert [p.name for p in config.root.iterdir()] == ["dataset.json"]   # no temporary file left
    assert "do-not-store" not in path.read_text()
    loaded = DatasetConfig.load("imagenet", "team-a", home=tmp_path)
    assert loaded == config
    assert DatasetConfig.from_json(json.loads(path.read_text())) == config


def test_load_missing_dataset_says_how_to_create_it(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"dataset 'nope' not found.*shipyard apply -f"):
        DatasetConfig.load("nope", home=tmp_path)


def _mutated(path: list, value, document=DATASET):
    doc = copy.deepcopy(document)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, field, message", [
    (["spec", "mounts", 0, "mountPoint"], "s3:/", "spec.mounts[0].mountPoint", "at least 5 characters"),
    (["spec", "mounts", 0, "mountPoint"], "pvc://claim/sub", "spec.mounts[0].mountPoint", "local:///abs/path"),
    (["spec", "mounts", 1, "mountPoint"], "local://relative/x", "spec.mounts[1].mountPoint", "absolute path"),
    (["spec", "mounts", 1, "mountPoint"], "data/labels", "spec.mounts[1].mountPoint", "absolute local path"),
    (["spec", "mounts", 0, "mountPoint"], "nosuchproto://x/y", "spec.mounts[0].mountPoint", "unknown scheme"),
    (["spec", "mounts"], [], "spec.mounts", "at least one mount"),
    (["spec", "mounts", 1, "path"], "/train/labels", "spec.mounts[1].path", "overlaps"),
    (["spec", "mounts", 1, "name"], "train", "spec.mounts[1].name", "already used"),
    (["spec", "mounts", 1, "readOnly"], "yes", "spec.mounts[1].readOnly", "true or false"),
    (["spec", "mounts", 0, "encryptOptions", 0, "valueFrom"], {}, "spec.mounts[0].encryptOptions[0].valueFrom."
     "secretKeyRef.name", "name of a secret"),
    (["metadata", "name"], "Bad_Name", "metadata.name", "lowercase name"),
    (["kind"], "Pod", "kind", "expected Dataset"),
])
def test_bad_dataset_documents_name_the_field(tmp_path, path, value, field, message):
    with pytest.raises(DataSpecError) as caught:
        DatasetConfig.from_documents(_mutated(path, value), None, home=tmp_path)
    assert caught.value.path == field
    assert message in caught.value.message
    assert str(caught.value).startswith(field + ": ")


LEVELS = ["spec", "worker", "tieredStore", "levels"]


@pytest.mark.parametrize("path, value, field, message", [
    (LEVELS + [1, "processMemory", "quota"], "lots", "runtime.spec.worker.tieredStore.levels[1].processMemory.quota",
     "512Mi or 10Gi"),
    (LEVELS + [1, "processMemory", "quota"], "0", "runtime.spec.worker.tieredStore.levels[1].processMemory.quota",
     "above zero"),
    (LEVELS + [0, "low"], "0.95", "runtime.spec.worker.tieredStore.levels[0].low", "must not be above the high"),
    (LEVELS + [0, "high"], "1.5", "runtime.spec.worker.tieredStore.levels[0].high", "0 < value <= 1"),
    (LEVELS + [0, "hostPath", "quotas"], ["1Gi", "2Gi", "3Gi"], "runtime.spec.worker.tieredStore.levels[0].hostPath"
     ".quotas", "one quota per path"),
    (LEVELS + [0, "hostPath", "paths"], ["relative", "/mnt/x"], "runtime.spec.worker.tieredStore.levels[0].hostPath.paths[0]",
     "absolute folder"),
    (LEVELS + [1], {"processMemory": {"quota": "1Gi"}, "emptyDir": {"quota": "1Gi"}},
     "runtime.spec.worker.tieredStore.levels[1]", "exactly one of"),
    (["spec", "options", "blockSize"], "4Q", "runtime.spec.options.blockSize", "4Mi"),
    (["spec", "options", "evictionPolicy"], "lfu", "runtime.spec.options.evictionPolicy", "scan-resistant, lru"),
    (["spec", "options", "metadataTTL"], "soon", "runtime.spec.options.metadataTTL", "5m"),
    (["spec", "options", "verifyReads"], "maybe", "runtime.spec.options.verifyReads", "true"),
    (["spec", "options", "blocksize"], "1Mi", "runtime.spec.options.blocksize", "did you mean 'blockSize'"),
    (["metadata", "name"], "other", "runtime.metadata.name", "same name"),
])
def test_bad_runtime_documents_name_the_field(tmp_path, path, value, field, message):
    with pytest.raises(DataSpecError) as caught:
        DatasetConfig.from_documents(DATASET, _mutated(path, value, RUNTIME), home=tmp_path)
    assert caught.value.path == field
    assert message in caught.value.message


def test_from_json_names_bad_fields(tmp_path):
    data = DatasetConfig.from_documents(DATASET, RUNTIME, home=tmp_path).to_json()
    data["cache"]["levels"][0]["medium"] = "TAPE"
    with pytest.raises(DataSpecError, match=r"^cache\.levels\[0\]\.medium: expected one of MEM, SSD, HDD"):
        DatasetConfig.from_json(data)


def test_storage_options_are_converted_nested_and_secrets_resolved(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets"
    (secrets / "s3-creds").mkdir(parents=True)
    (secrets / "s3-creds" / "secret").write_text("from-a-file\n")
    monkeypatch.setenv("SHIPYARD_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("ID", "from-the-environment")
    mount = DatasetConfig.from_documents(DATASET, None, home=tmp_path).mounts[0]
    options = storage_options(mount)
    assert options == {"anon": True, "client_kwargs": {"region_name": "eu-west-1"},
                       "key": "from-the-environment", "secret": "from-a-file"}
    assert nest_options({"a.b": 1, "a.c": "x", "d": 2.5}) == {"a": {"b": 1, "c": "x"}, "d": 2.5}
    monkeypatch.delenv("ID")
    with pytest.raises(SourceError, match=r"mount 'train': option 'key' needs secret 's3-creds' key 'id': export ID="):
        resolve_secret(SecretRef("key", "s3-creds", "id"), "train")


def test_versions_prefer_etag_then_mtime_then_size():
    assert version_of({"size": 3, "ETag": '"abc"', "mtime": 5}) == "etag:abc"
    assert version_of({"size": 3, "mtime": 5.5}) == "mtime:5.5:3"
    assert version_of({"size": 3}) == "size:3"


def test_mount_dataclass_defaults_and_path_mapping(tmp_path):
    a = Mount("/srv/data/images")
    b = Mount("memory://bucket/labels", path="/meta/labels")
    assert (a.name, a.path) == ("images", "/images")
    sources = Sources([a, b])
    mount, relative = sources.locate("/meta/labels/x/y.json")
    assert (mount.name, relative) == ("labels", "x/y.json")
    assert sources.url(mount, relative) == "memory://bucket/labels/x/y.json"
    assert sources.url(*sources.locate("/images/cat.jpg")) == "file:///srv/data/images/cat.jpg"
    with pytest.raises(FileNotFoundError, match="no mount holds this path"):
        sources.locate("/elsewhere/x")
