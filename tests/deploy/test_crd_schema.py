"""The ClusterMesh CRD's OpenAPI schema: the example and `connect`'s output pass, malformed specs are refused.

The schema is read from the checked-in CRD (deploy/kubernetes/01-crd.yaml), which is
clustermesh/schemas/clustermesh-crd.json rendered (the one definition; `connect` validates against it too).
It is applied the way a kube-apiserver does under `kubectl apply`'s default strict field validation, for the
subset of OpenAPI v3 the CRD uses: jsonschema's Draft 4 keywords (the ones OpenAPI v3 takes over), plus
unknown fields as errors and `x-kubernetes-list-map-keys` as a uniqueness constraint. Also checks that the
schema is structural (Kubernetes refuses a CRD whose schema is not). Not covered: CEL rules (none used) and
defaulting (none declared).
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from clustermesh import connect, deploy_render

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "deploy" / "kubernetes" / deploy_render.CRD_FILE
EXAMPLE_PATH = REPO / "deploy" / "kubernetes" / "examples" / "clustermesh.yaml"

_draft4_properties = jsonschema.Draft4Validator.VALIDATORS["properties"]


def _strict_properties(
    validator: jsonschema.protocols.Validator, properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """`properties`, plus what strict field validation adds: a field the schema does not declare is an error."""
    yield from _draft4_properties(validator, properties, instance, schema)
    if isinstance(instance, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for field in instance:
            if field not in properties:
                yield jsonschema.ValidationError(f"unknown field {field!r}")


def _list_map_keys(
    validator: jsonschema.protocols.Validator, keys: list[str], instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """`x-kubernetes-list-type: map`: no two items may share the values of the map keys."""
    if not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            identity = tuple(repr(item.get(key)) for key in keys)
            if identity in seen:
                yield jsonschema.ValidationError(f"duplicate entry for {dict(zip(keys, identity, strict=True))}")
            seen.add(identity)


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"properties": _strict_properties, "x-kubernetes-list-map-keys": _list_map_keys},
)


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    [document] = yaml.safe_load_all(CRD_PATH.read_text())
    assert document == connect.cluster_mesh_crd(), "the rendered CRD is the one of clustermesh/schemas/"
    crd_document: dict[str, Any] = document
    return crd_document


@pytest.fixture(scope="module")
def validator(crd: dict[str, Any]) -> jsonschema.protocols.Validator:
    [version] = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    KubernetesValidator.check_schema(schema)
    return KubernetesValidator(schema)


def _structural_problems(schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Why a schema is not structural (Kubernetes' rules for the keywords this CRD uses)."""
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        yield f"{path or '<root>'}: no type"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{path}: properties and additionalProperties together"
    for name, child in schema.get("properties", {}).items():
        yield from _structural_problems(child, f"{path}.{name}")
    if "items" in schema:
        yield from _structural_problems(schema["items"], f"{path}[]")


def test_the_crd_matches_what_connect_writes(crd: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    assert f"{crd['spec']['group']}/{version['name']}" == connect.CLUSTER_MESH_API_VERSION
    assert crd["spec"]["names"]["kind"] == connect.CLUSTER_MESH_KIND
    assert crd["spec"]["names"]["plural"] == connect.CLUSTER_MESH_PLURAL
    assert crd["spec"]["scope"] == "Cluster", "connect reads and writes a cluster-scoped resource"
    assert version["served"] and version["storage"]


def test_the_schema_is_structural(crd: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    assert list(_structural_problems(version["schema"]["openAPIV3Schema"])) == []


def test_the_example_clustermesh_is_valid(validator: jsonschema.protocols.Validator) -> None:
    assert list(validator.iter_errors(_example())) == []


def test_what_connect_writes_is_valid(validator: jsonschema.protocols.Validator) -> None:
    resource = connect.cluster_mesh(["cluster-b", "cluster-c"], namespace=deploy_render.DEFAULT_NAMESPACE)
    assert list(validator.iter_errors(resource)) == []
    merged = connect.cluster_mesh(["cluster-d"], namespace="kube-system", existing=resource)
    assert list(validator.iter_errors(merged)) == []


def _example() -> dict[str, Any]:
    example: dict[str, Any] = yaml.safe_load(EXAMPLE_PATH.read_text())
    return example


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "cluster-b", "secret": {"name": "cluster-b-secret", "namespace": "clustermesh"}}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


MALFORMED: dict[str, Any] = {
    "no spec": None,
    "no clusters": {},
    "clusters not a list": {"clusters": {"cluster-b": "cluster-b-secret"}},
    "entry not an object": {"clusters": ["cluster-b"]},
    "no name": {"clusters": [_entry(name=None)]},
    "name not a string": {"clusters": [_entry(name=2)]},
    "empty name": {"clusters": [_entry(name="")]},
    "upper-case name": {"clusters": [_entry(name="Cluster-B")]},
    "name ends with a dash": {"clusters": [_entry(name="cluster-")]},
    "name of 33 characters": {"clusters": [_entry(name="c" * 33)]},
    "no secret": {"clusters": [_entry(secret=None)]},
    "secret as a string": {"clusters": [_entry(secret="cluster-b-secret")]},
    "secret without a name": {"clusters": [_entry(secret={"namespace": "clustermesh"})]},
    "secret namespace not a label": {"clusters": [_entry(secret={"name": "s", "namespace": "kube.system"})]},
    "secret name with a slash": {"clusters": [_entry(secret={"name": "a/b", "namespace": "clustermesh"})]},
    "duplicate peer": {"clusters": [_entry(), _entry()]},
    "unknown field in an entry": {"clusters": [_entry(endpoints=["https://203.0.113.1:2379"])]},
    "unknown field in the spec": {"clusters": [_entry()], "peers": []},
    "too many peers": {"clusters": [_entry(name=f"c{index}") for index in range(511)]},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_specs_are_refused(validator: jsonschema.protocols.Validator, case: str) -> None:
    resource = copy.deepcopy(_example())
    if MALFORMED[case] is None:
        del resource["spec"]
    else:
        resource["spec"] = MALFORMED[case]
    assert list(validator.iter_errors(resource)), f"{case} was accepted"
