"""Kubernetes Nodes → node records (`cilium/state/nodes/v1/<cluster>/<node>`, reference §2.4).

A node record carries what a peer needs to reach the node and its pods: the InternalIP and ExternalIP
addresses (in `status.addresses` order), the pod CIDRs of `spec.podCIDRs` (or the older `spec.podCIDR`) as
allocation CIDRs (the first of each family primary, the rest secondary), labels and annotations, and the
addresses Cilium's agent annotates on its node (cilium_host IPs as CiliumInternalIP, health and ingress IPs,
the WireGuard public key), read the way Cilium's own k8s node parser reads them. The cluster name and ID are
the publishing cluster's; `Source` is "custom-resource", as Cilium's apiserver writes it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from apiserver import fields
from clustermesh import records
from clustermesh.errors import DecodeError

SOURCE = "custom-resource"
INTERNAL_IP = "InternalIP"
EXTERNAL_IP = "ExternalIP"
CILIUM_INTERNAL_IP = "CiliumInternalIP"

# Annotations the Cilium agent writes on its Node (pkg/annotation, network.cilium.io/...).
WIREGUARD_PUB_KEY = "network.cilium.io/wg-pub-key"
_CILIUM_HOST_IPS = ("network.cilium.io/ipv4-cilium-host", "network.cilium.io/ipv6-cilium-host")
_HEALTH_IPV4 = "network.cilium.io/ipv4-health-ip"
_HEALTH_IPV6 = "network.cilium.io/ipv6-health-ip"
_INGRESS_IPV4 = "network.cilium.io/ipv4-Ingress-ip"
_INGRESS_IPV6 = "network.cilium.io/ipv6-Ingress-ip"

_ADDRESS_TYPES = frozenset({INTERNAL_IP, EXTERNAL_IP})


def node_record(obj: Mapping[str, Any], *, cluster: str, cluster_id: int) -> records.Node:
    """The node record of a Node object; DecodeError naming the field if the object is malformed."""
    metadata = fields.mapping(obj, "metadata")
    name = fields.string(metadata, "name", "metadata.name")
    labels = fields.string_map(metadata, "labels", "metadata.labels")
    annotations = fields.string_map(metadata, "annotations", "metadata.annotations")
    notes = annotations or {}
    addresses: list[records.NodeAddress] = []
    for index, entry in enumerate(fields.items(fields.mapping(obj, "status"), "addresses", "status.addresses")):
        path = f"status.addresses[{index}]"
        kind = fields.string(entry, "type", f"{path}.type")
        if kind in _ADDRESS_TYPES:
            addresses.append(records.NodeAddress(kind, fields.ip(fields.string(entry, "address", path), path)))
    for annotation in _CILIUM_HOST_IPS:
        if notes.get(annotation):
            addresses.append(records.NodeAddress(CILIUM_INTERNAL_IP, fields.ip(notes[annotation], annotation)))
    v4, v6 = _alloc_cidrs(fields.mapping(obj, "spec"))
    return records.Node(
        name=name,
        cluster=cluster,
        ip_addresses=tuple(addresses) if addresses else None,
        ipv4_alloc_cidr=v4[0] if v4 else None,
        ipv4_secondary_alloc_cidrs=tuple(v4[1:]) if len(v4) > 1 else None,
        ipv6_alloc_cidr=v6[0] if v6 else None,
        ipv6_secondary_alloc_cidrs=tuple(v6[1:]) if len(v6) > 1 else None,
        ipv4_health_ip=_annotated_ip(notes, _HEALTH_IPV4),
        ipv6_health_ip=_annotated_ip(notes, _HEALTH_IPV6),
        ipv4_ingress_ip=_annotated_ip(notes, _INGRESS_IPV4),
        ipv6_ingress_ip=_annotated_ip(notes, _INGRESS_IPV6),
        cluster_id=cluster_id,
        source=SOURCE,
        labels=labels,
        annotations=annotations,
        wireguard_pub_key=notes.get(WIREGUARD_PUB_KEY, ""),
        boot_id=fields.string(fields.mapping(obj, "status.nodeInfo"), "bootID", "status.nodeInfo.bootID"),
    )


def _annotated_ip(annotations: Mapping[str, str], annotation: str) -> str:
    text = annotations.get(annotation, "")
    return fields.ip(text, annotation) if text else ""


def _alloc_cidrs(spec: Mapping[str, Any]) -> tuple[list[records.CIDR], list[records.CIDR]]:
    """The IPv4 and IPv6 pod CIDRs of a node spec, in order."""
    texts = fields.strings(spec, "podCIDRs", "spec.podCIDRs")
    if not texts:
        single = fields.string(spec, "podCIDR", "spec.podCIDR")
        texts = [single] if single else []
    v4: list[records.CIDR] = []
    v6: list[records.CIDR] = []
    for index, text in enumerate(texts):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise DecodeError(f"spec.podCIDRs[{index}]", f"{text[:64]!r} is not a CIDR") from None
        (v4 if network.version == 4 else v6).append(records.CIDR.parse(text))
    return v4, v6


def internal_ip(node: records.Node) -> str:
    """The node's first InternalIP, preferring IPv4 (what Cilium reports as an endpoint's node IP); "" if none."""
    internal = [address.ip for address in node.ip_addresses or () if address.type == INTERNAL_IP]
    return next((ip for ip in internal if ":" not in ip), internal[0] if internal else "")


def pod_cidrs(node: records.Node) -> list[str]:
    """The node's pod CIDRs as `ip/prefix` strings, IPv4 first."""
    cidrs = [
        node.ipv4_alloc_cidr,
        *(node.ipv4_secondary_alloc_cidrs or ()),
        node.ipv6_alloc_cidr,
        *(node.ipv6_secondary_alloc_cidrs or ()),
    ]
    return [str(cidr.network()) for cidr in cidrs if cidr is not None]
