"""Pods → endpoints: the identity label set of a pod and its ipcache entries (`cilium/state/ip/v1/default/<ip>`).

What Cilium's agent records in a CiliumEndpoint, derived from the Pod itself (reference §2.5, §2.6): one
ipcache entry per pod IP (IPv4 and IPv6), naming the pod, its service account and its named container
ports, and the identity of its label set. The label set is the pod's labels (source `k8s`) plus the
namespace, the cluster and the service account labels; equal sets share one identity (clustermesh
identities.py numbers them). The entry's HostIP is the IP of the pod's node, which the caller supplies.

Pods that have no endpoint are not exported: not yet scheduled, without an IP yet, on the host network
(their IP is the node's, which Cilium does not attribute to a pod), or finished (their IPs are free for reuse).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import msgspec

from apiserver import fields
from clustermesh import codec, records
from clustermesh.errors import DecodeError

POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
DEFAULT_SERVICE_ACCOUNT = "default"
_SOURCE = "k8s"
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_MAX_PORT = 0xFFFF
# Labels that Cilium's default label filter (pkg/labelsfilter) always drops: they change on every rollout
# and would give each ReplicaSet generation its own identity. The rest of that filter (kubernetes.io
# prefixes) is not applied: identities are the pod's own labels.
_IGNORED_LABELS = frozenset({"pod-template-hash", "pod-template-generation", "controller-revision-hash"})
# Distinct (labels, namespace, service account) combinations whose label string is remembered: pods of one
# workload share them, so a cluster has about as many as identities. Bounded, because a label unique to each
# pod (a StatefulSet's pod-name label) would otherwise grow the memo with every pod ever seen.
_LABEL_STRINGS_CACHED = 16384


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    """What the apiserver exports about one pod.

    A frozen msgspec Struct rather than a dataclass: five times cheaper to build and compare, and there is
    one per pod. Holds only strings and tuples of records, so it cannot close a reference cycle (gc=False).
    """

    namespace: str
    name: str
    uid: str
    node: str
    host_ip: str
    """The pod's status.hostIP, used when its node is unknown."""
    service_account: str
    ips: tuple[str, ...]
    labels: str
    """The identity label string (`k8s:a=b;...`), sorted as Cilium sorts it."""
    named_ports: tuple[records.NamedPort, ...] | None


def endpoint(obj: Mapping[str, Any], *, cluster: str) -> Endpoint | None:
    """The endpoint of a Pod object, or None if the pod has none (yet); DecodeError if it is malformed."""
    metadata = fields.mapping(obj, "metadata")
    spec = fields.mapping(obj, "spec")
    status = fields.mapping(obj, "status")
    node = fields.string(spec, "nodeName", "spec.nodeName")
    if not node or spec.get("hostNetwork") is True:
        return None
    if fields.string(status, "phase", "status.phase") in _TERMINAL_PHASES:
        return None
    ips = _pod_ips(status)
    if not ips:
        return None
    namespace = fields.string(metadata, "namespace", "metadata.namespace", default="default")
    service_account = (
        fields.string(spec, "serviceAccountName", "spec.serviceAccountName")
        or fields.string(spec, "serviceAccount", "spec.serviceAccount")
        or DEFAULT_SERVICE_ACCOUNT
    )
    labels = metadata.get("labels")
    if labels is not None and type(labels) is not dict:
        fields.string_map(metadata, "labels", "metadata.labels")  # raises, naming the field
    try:
        label_string = _label_string(tuple(labels.items()) if labels else (), namespace, service_account, cluster)
    except TypeError:
        # An unhashable label value (a list, a mapping): fields.string_map names it.
        fields.string_map(metadata, "labels", "metadata.labels")
        raise
    host_ip = fields.string(status, "hostIP", "status.hostIP")
    return Endpoint(
        namespace=namespace,
        name=fields.string(metadata, "name", "metadata.name"),
        uid=fields.string(metadata, "uid", "metadata.uid"),
        node=node,
        host_ip=fields.ip(host_ip, "status.hostIP") if host_ip else "",
        service_account=service_account,
        ips=ips,
        labels=label_string,
        named_ports=_named_ports(spec),
    )


@functools.lru_cache(maxsize=_LABEL_STRINGS_CACHED)
def _label_string(labels: tuple[tuple[str, str], ...], namespace: str, service_account: str, cluster: str) -> str:
    """The identity label string of a pod; DecodeError (never cached) if its labels cannot form one.

    Memoised: formatting and checking the labels is the largest part of converting a pod, and the result
    depends on these arguments only. The labels are checked here too, once per distinct set rather than once
    per pod: a set holding a value that is not a string is never cached (it raises), and cannot equal one
    that is (a string equals no other type).
    """
    fields.string_map({"labels": dict(labels)}, "labels", "metadata.labels")
    # Keys are qualified explicitly so that a key containing ':' cannot smuggle in another source.
    qualified = {f"{_SOURCE}:{key}": value for key, value in labels if key not in _IGNORED_LABELS}
    qualified[f"{_SOURCE}:{POD_NAMESPACE_LABEL}"] = namespace
    qualified[f"{_SOURCE}:{records.POLICY_LABEL_CLUSTER}"] = cluster
    qualified[f"{_SOURCE}:{SERVICE_ACCOUNT_LABEL}"] = service_account
    try:
        return records.format_labels(qualified)
    except ValueError as exc:
        raise DecodeError("metadata.labels", str(exc)) from None


def _pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod's IPs in `status.podIPs` order (or `status.podIP`), canonical and without duplicates."""
    found: dict[str, None] = {}
    entries = fields.items(status, "podIPs", "status.podIPs")
    for index, entry in enumerate(entries):
        path = f"status.podIPs[{index}].ip"
        found[fields.ip(fields.string(entry, "ip", path), path)] = None
    if not entries:
        single = fields.string(status, "podIP", "status.podIP")
        if single:
            found[fields.ip(single, "status.podIP")] = None
    return tuple(found)


def _named_ports(spec: Mapping[str, Any]) -> tuple[records.NamedPort, ...] | None:
    """The pod's named container ports sorted by name (the first container declaring a name wins)."""
    # Once per pod: a field's path is formatted only when the field is malformed, through the checking
    # fields.* call (a well-formed port skips them all, a third of the conversion of a pod with one port).
    ports: dict[str, records.NamedPort] = {}
    for c_index, container in enumerate(fields.items(spec, "containers", "spec.containers")):
        entries = container.get("ports")
        if entries is None:
            continue
        if type(entries) is not list:
            entries = fields.items(container, "ports", f"spec.containers[{c_index}].ports")
        for p_index, entry in enumerate(entries):
            if type(entry) is not dict:
                fields.items(container, "ports", f"spec.containers[{c_index}].ports")  # raises, naming the item
            name = entry.get("name")
            if not isinstance(name, str):
                # Unnamed (None) or malformed: fields.string says which.
                name = fields.string(entry, "name", f"{_port_path(c_index, p_index)}.name")
            if not name or name in ports:
                continue
            protocol = entry.get("protocol", "TCP")
            if type(protocol) is not str:
                protocol = fields.string(entry, "protocol", f"{_port_path(c_index, p_index)}.protocol", default="TCP")
            number = entry.get("containerPort")
            if type(number) is not int or not 0 < number <= _MAX_PORT:
                number = fields.port(entry, "containerPort", _port_path(c_index, p_index))
            ports[name] = records.NamedPort(name, number, protocol)
    return tuple(ports[name] for name in sorted(ports)) or None


def _port_path(container: int, port: int) -> str:
    return f"spec.containers[{container}].ports[{port}]"


def ip_entries(pod: Endpoint, *, identity: int, host_ip: str) -> dict[str, bytes]:
    """The ipcache entries of a pod, encoded (codec.encode of their IPIdentityPair), keyed by IP."""
    return {
        ip: codec.encode_pod_ip_identity(
            ip, host_ip, identity, pod.namespace, pod.name, pod.uid, pod.service_account, pod.named_ports
        )
        for ip in pod.ips
    }
