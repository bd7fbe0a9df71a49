"""The conversion functions on their own: Kubernetes object dicts in, parsed objects and records out.

Covers the rules the golden scenarios do not spell out one by one: secondary pod CIDRs and Cilium's node
annotations, IP canonicalisation (IPv6 compression, IPv4-mapped addresses, zones refused), which pods have
an endpoint, named-port selection, the global/shared annotations and their aliases, EndpointSlice readiness
and merging, service export details, and that malformed fields raise DecodeError naming the field.
Excludes: etcd and the publisher (test_scenarios.py).
"""

from __future__ import annotations

import pytest

from apiserver import endpoints, fields, nodes, service_exports, services
from clustermesh import codec, records
from clustermesh.errors import DecodeError


def test_node_secondary_cidrs_and_cilium_annotations() -> None:
    node = nodes.node_record(
        {
            "metadata": {
                "name": "n",
                "annotations": {
                    "network.cilium.io/ipv4-cilium-host": "10.0.0.1",
                    "network.cilium.io/ipv6-cilium-host": "fd00::1",
                    "network.cilium.io/ipv4-health-ip": "10.0.0.2",
                    "network.cilium.io/ipv6-Ingress-ip": "fd00::3",
                },
            },
            "spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64", "10.0.1.0/24"]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "fd00:0::5"},
                    {"type": "ExternalIP", "address": "192.0.2.1"},
                ]
            },
        },
        cluster="c",
        cluster_id=1,
    )
    assert node.ip_addresses == (
        records.NodeAddress("InternalIP", "fd00::5"),
        records.NodeAddress("ExternalIP", "192.0.2.1"),
        records.NodeAddress("CiliumInternalIP", "10.0.0.1"),
        records.NodeAddress("CiliumInternalIP", "fd00::1"),
    )
    assert node.ipv4_alloc_cidr == records.CIDR.parse("10.0.0.0/24")
    assert node.ipv4_secondary_alloc_cidrs == (records.CIDR.parse("10.0.1.0/24"),)
    assert node.ipv6_secondary_alloc_cidrs is None
    assert (node.ipv4_health_ip, node.ipv6_ingress_ip) == ("10.0.0.2", "fd00::3")
    assert nodes.pod_cidrs(node) == ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]
    assert nodes.internal_ip(node) == "fd00::5"


def test_internal_ip_prefers_ipv4() -> None:
    addresses = (records.NodeAddress("InternalIP", "fd00::5"), records.NodeAddress("InternalIP", "10.1.1.1"))
    node = records.Node(ip_addresses=addresses)
    assert nodes.internal_ip(node) == "10.1.1.1"
    assert nodes.internal_ip(records.Node()) == ""


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"spec": {"podCIDRs": ["10.0.0.0/33"]}}, "spec.podCIDRs[0]"),
        ({"spec": {"podCIDRs": "10.0.0.0/24"}}, "spec.podCIDRs"),
        ({"status": {"addresses": [{"type": "InternalIP", "address": "x"}]}}, "status.addresses[0]"),
        ({"metadata": {"labels": {"a": 1}}}, "metadata.labels['a']"),
        ({"metadata": {"annotations": {"network.cilium.io/ipv4-health-ip": "nope"}}},
         "network.cilium.io/ipv4-health-ip"),
    ],
)
def test_malformed_node_names_the_field(obj, field) -> None:
    with pytest.raises(DecodeError) as raised:
        nodes.node_record({"metadata": {"name": "n"}} | obj, cluster="c", cluster_id=1)
    assert raised.value.key == field


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("10.0.0.1", "10.0.0.1"), ("FD00:0:0::0A", "fd00::a"), ("::ffff:10.0.0.1", "10.0.0.1")],
)
def test_ips_are_canonical(text, canonical) -> None:
    assert fields.ip(text, "f") == canonical


@pytest.mark.parametrize("text", ["fe80::1%eth0", "10.0.0.256", "", "10.0.0.0/8"])
def test_bad_ips_are_refused(text) -> None:
    with pytest.raises(DecodeError):
        fields.ip(text, "f")


def _pod(**changes: object) -> dict:
    obj: dict = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x", "controller-revision-hash": "1"}},
        "spec": {"nodeName": "n", "serviceAccount": "legacy", "containers": [
            {"name": "a", "ports": [{"name": "web", "containerPort": 80}, {"name": "web", "containerPort": 81}]},
            {"name": "b", "ports": [{"name": "admin", "containerPort": 9000, "protocol": "SCTP"}]},
        ]},
        "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
    }
    for path, value in changes.items():
        section, _, field = path.partition("__")
        obj[section][field] = value
    return obj


def test_pod_endpoint() -> None:
    pod = endpoints.endpoint(_pod(), cluster="c")
    assert pod is not None
    assert pod.ips == ("10.0.0.1", "fd00::1")
    assert pod.service_account == "legacy"
    assert pod.labels == (
        "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c;k8s:io.cilium.k8s.policy.serviceaccount=legacy;"
        "k8s:io.kubernetes.pod.namespace=ns;"
    )
    assert pod.named_ports == (records.NamedPort("admin", 9000, "SCTP"), records.NamedPort("web", 80, "TCP"))
    entries = endpoints.ip_entries(pod, identity=300, host_ip="192.0.2.1")
    assert list(entries) == ["10.0.0.1", "fd00::1"]
    assert entries["fd00::1"] == codec.encode(
        records.IPIdentityPair(
            ip="fd00::1",
            host_ip="192.0.2.1",
            id=300,
            k8s_namespace="ns",
            k8s_pod_name=pod.name,
            k8s_pod_uid=pod.uid,
            k8s_service_account="legacy",
            named_ports=pod.named_ports,
        )
    )


@pytest.mark.parametrize(
    ("name", "service_account", "named_ports"),
    [
        ("plain", "sa", (records.NamedPort("web", 80, "TCP"),)),
        ("esc<aped>&\u2028", "", None),
        ("", "sa", ()),
    ],
)
def test_encoded_pod_entries_are_the_bytes_of_their_record(
    name: str, service_account: str, named_ports: tuple[records.NamedPort, ...] | None
) -> None:
    # The publisher encodes pod entries without building their record: same bytes, Go's escapes and omitempty.
    value = codec.encode_pod_ip_identity(
        "10.0.0.1", "192.0.2.1", 70000, "ns", name, "uid", service_account, named_ports
    )
    assert value == codec.encode(
        records.IPIdentityPair(
            ip="10.0.0.1",
            host_ip="192.0.2.1",
            id=70000,
            k8s_namespace="ns",
            k8s_pod_name=name,
            k8s_pod_uid="uid",
            k8s_service_account=service_account,
            named_ports=named_ports,
        )
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"spec__nodeName": None},
        {"spec__hostNetwork": True},
        {"status__phase": "Failed"},
        {"status__podIPs": []},
    ],
)
def test_pods_without_an_endpoint(changes) -> None:
    assert endpoints.endpoint(_pod(**changes), cluster="c") is None


def test_malformed_pods_name_the_field() -> None:
    with pytest.raises(DecodeError) as raised:
        endpoints.endpoint(_pod(status__podIPs=[{"ip": "10.0.0.1"}, {"ip": "bad"}]), cluster="c")
    assert raised.value.key == "status.podIPs[1].ip"
    with pytest.raises(DecodeError) as raised:
        endpoints.endpoint(_pod(spec__containers=[{"ports": [{"name": "x", "containerPort": True}]}]), cluster="c")
    assert raised.value.key == "spec.containers[0].ports[0]"


@pytest.mark.parametrize("labels", [{"a": 1}, {"a": ["x"]}, {"a": {"b": "c"}}])
def test_pod_labels_that_are_not_strings_name_the_label(labels: dict[str, object]) -> None:
    # Checked inside the memoised label string (once per distinct set), the message is unchanged.
    for _ in range(2):  # never cached: the second pod is refused the same way
        with pytest.raises(DecodeError) as raised:
            endpoints.endpoint(_pod(metadata__labels=labels), cluster="c")
        assert (raised.value.key, raised.value.reason) == ("metadata.labels['a']", "expected string keys and values")


def _service(annotations: dict[str, str], **spec: object) -> dict:
    return {
        "metadata": {"name": "s", "namespace": "ns", "annotations": annotations},
        "spec": {"clusterIPs": ["10.96.0.1", "fd00::a"], "ports": [{"port": 53, "protocol": "UDP"}], **spec},
    }


@pytest.mark.parametrize(
    ("annotations", "spec", "exported"),
    [
        ({"service.cilium.io/global": "True"}, {}, True),
        ({"io.cilium/global-service": "true", "io.cilium/shared-service": "false"}, {}, False),
        ({"service.cilium.io/global": "true", "service.cilium.io/shared": "TRUE"}, {}, True),
        ({"service.cilium.io/global": "false"}, {}, False),
        ({}, {}, False),
        ({"service.cilium.io/global": "true"}, {"type": "ExternalName"}, False),
    ],
)
def test_global_and_shared(annotations, spec, exported) -> None:
    assert services.service(_service(annotations, **spec)).exported is exported


def test_namespace_globalness() -> None:
    annotated = {"metadata": {"name": "n", "annotations": {"clustermesh.cilium.io/global": "TRUE"}}}
    assert services.namespace_global(annotated, default=False) is True
    assert services.namespace_global({"metadata": {"name": "n"}}, default=False) is False
    assert services.namespace_global({"metadata": {"name": "n"}}, default=True) is True


def _slice(name: str, endpoints_: list[dict], ports: list[dict], **extra: object) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints_,
        **extra,
    }


def test_cluster_service_merges_ready_backends_of_every_slice() -> None:
    svc = services.service(_service({"service.cilium.io/global": "true"}))
    first = services.endpoint_slice(_slice(
        "a",
        [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True}}],
        [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "all", "port": None}],
    ))
    second = services.endpoint_slice(_slice(
        "b", [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}], [{"name": "metrics", "port": 9153}]
    ))
    assert first is not None and second is not None
    record = services.cluster_service(svc, [first, second], cluster="c", cluster_id=2)
    dns = {"": records.L4Addr("UDP", 53)}
    assert record.frontends == {"10.96.0.1": dns, "fd00::a": dns}
    assert record.backends == {
        "10.0.0.1": {"dns": records.L4Addr("UDP", 5353), "metrics": records.L4Addr("TCP", 9153)}
    }
    assert record.hostnames is None and record.include_external and record.shared and record.cluster_id == 2


def test_slices_that_feed_no_service() -> None:
    unowned = _slice("a", [], [])
    unowned["metadata"]["labels"] = {}
    assert services.endpoint_slice(unowned) is None
    assert services.endpoint_slice(_slice("a", [], [], addressType="FQDN")) is None


def test_service_export_details() -> None:
    export = service_exports.export({"metadata": {"name": "s", "namespace": "ns"}})
    assert export.created == service_exports.EPOCH and export.labels is None
    spec = service_exports.exported_service(_service({}, sessionAffinityConfig=None, clusterIP="None"))
    assert spec is not None and spec.headless and spec.session_affinity_config is None
    record = service_exports.service_export(export, spec, cluster="c")
    assert record.type == "Headless" and record.ports == (records.ServicePort(protocol="UDP", port=53),)
    assert service_exports.exported_service(_service({}, type="ExternalName")) is None
    with pytest.raises(DecodeError) as raised:
        service_exports.exported_service(_service({}, ports=[{"port": 80, "appProtocol": 7}]))
    assert raised.value.key == "spec.ports[0].appProtocol"
