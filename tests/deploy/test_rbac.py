"""The rendered RBAC grants exactly what the daemons use: every API call allowed, no rule left unused.

The real `clustermesh-apiserver --source kubernetes:KUBECONFIG` (against a real etcd) and the real
`clustermesh-agent --local-source kubernetes:KUBECONFIG` — reading its peers from the ClusterMesh resource and
its Secrets (the rendered default) or from a mesh-config directory — run as subprocesses against the fake
kube-apiserver of tests/kube/test_kubernetes_api.py (the real list/watch protocol), extended here with the
collections the daemons read and with a handler that records every request — method, path and query, writes
included (refused, as a read-only server would). Each request is turned into the attributes Kubernetes' RBAC
authorizer checks (API group, resource, verb, namespace, name) and matched against the rules the renderer
binds to that daemon's ServiceAccount. The run lasts until every granted (group, resource, verb) has been
used: the daemons start all their reflectors at once, so a call outside the grants would show up by then.
With the ClusterMesh resource, every Secret request must also name its Secret (a field selector), so that a
Role narrowed to `resourceNames` would still allow them. Not covered: the kubelet's own calls (secret volumes,
probes), which RBAC for service accounts does not govern.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from clustermesh import certs, connect, deploy_render
from clustermesh.etcd import process
from tests.helpers import eventually
from tests.kube import test_kubernetes_api as fake

REPO = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 30.0
EXTRA_RESOURCES = (
    fake.Resource("/api/v1/namespaces", "v1", "Namespace"),
    fake.Resource("/api/v1/pods", "v1", "Pod"),
    fake.Resource("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
)
OPTIONS = deploy_render.Options(cluster_name="cluster-a", cluster_id=1)


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What the RBAC authorizer decides on for one request."""

    group: str
    resource: str
    verb: str
    namespace: str | None = None
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Call:
    """One request as the fake API server received it."""

    method: str
    path: str
    query: dict[str, str]

    def attributes(self) -> Attributes:
        """The request's RBAC attributes, as kube-apiserver's RequestInfoFactory derives them."""
        segments = self.path.strip("/").split("/")
        if segments[0] == "api":
            group, rest = "", segments[2:]
        elif segments[0] == "apis":
            group, rest = segments[1], segments[3:]
        else:
            raise AssertionError(f"not a resource request: {self.method} {self.path}")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        resource = "/".join([rest[0], *rest[2:3]])
        name = rest[1] if len(rest) > 1 else None
        selector = self.query.get("fieldSelector", "")
        if name is None and selector.startswith("metadata.name="):
            name = selector.removeprefix("metadata.name=")
        if self.method == "GET":
            if self.query.get("watch") in ("true", "1"):
                verb = "watch"
            else:
                verb = "get" if len(rest) > 1 else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[self.method]
        return Attributes(group, resource, verb, namespace, name)


class RecordingCluster(fake.FakeCluster):
    """The fake's state plus every call any handler received, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._calls_lock = threading.Lock()

    def record_call(self, call: Call) -> None:
        with self._calls_lock:
            self.calls.append(call)

    def observed(self) -> set[Attributes]:
        with self._calls_lock:
            return {call.attributes() for call in self.calls}


class RecordingHandler(fake._Handler):
    """The fake's handler, recording each request first; anything but GET is refused as read-only."""

    def _record(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        cluster = self.server.cluster
        assert isinstance(cluster, RecordingCluster)
        cluster.record_call(Call(self.command, url.path, query))

    def do_GET(self) -> None:
        self._record()
        super().do_GET()

    def _refuse(self) -> None:
        self._record()
        self.close_connection = True
        self._status(405, "MethodNotAllowed", "this test server is read-only")

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> RecordingCluster:
    for resource in EXTRA_RESOURCES:
        monkeypatch.setitem(fake.RESOURCES, resource.path, resource)
    # The fake builds its HTTP server with the module's handler class: swap in the recording one.
    monkeypatch.setattr(fake, "_Handler", RecordingHandler)
    return RecordingCluster()


@pytest.fixture
async def kubeconfig(tmp_path: pathlib.Path, cluster: RecordingCluster) -> AsyncIterator[pathlib.Path]:
    server = fake.FakeAPIServer(cluster)
    try:
        yield fake.write_kubeconfig(tmp_path / "kubeconfig", server.url)
    finally:
        await asyncio.to_thread(server.stop)


def _granted(service_account: str, options: deploy_render.Options) -> list[dict[str, Any]]:
    """The rules the rendered RBAC binds to a ServiceAccount (ClusterRoles and Roles alike)."""
    documents = deploy_render.render(options, None)[deploy_render.RBAC_FILE]
    roles = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents if doc["kind"] in ("Role", "ClusterRole")}
    rules: list[dict[str, Any]] = []
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": options.namespace}
        if subject in binding["subjects"]:
            role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
            namespace = role["metadata"].get("namespace")
            rules += [{**rule, "namespace": namespace} for rule in role["rules"]]
    return rules


def _allows(rule: dict[str, Any], request: Attributes) -> bool:
    return (
        request.group in rule["apiGroups"]
        and request.resource in rule["resources"]
        and request.verb in rule["verbs"]
        and (rule["namespace"] is None or rule["namespace"] == request.namespace)
        and (not rule.get("resourceNames") or request.name in rule["resourceNames"])
    )


def _grants(rules: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


@dataclasses.dataclass
class Daemon:
    """A daemon subprocess with its output in a log file."""

    process: asyncio.subprocess.Process
    log: pathlib.Path

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(DEADLINE):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _start(log: pathlib.Path, module: str, *args: str) -> Daemon:
    with log.open("wb") as output:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
        )
    return Daemon(proc, log)


async def _check(
    cluster: RecordingCluster, daemon: Daemon, service_account: str, options: deploy_render.Options = OPTIONS
) -> None:
    rules = _granted(service_account, options)
    wanted = set(_grants(rules))

    def used() -> set[tuple[str, str, str]]:
        return {(a.group, a.resource, a.verb) for a in cluster.observed()}

    try:
        # A timeout is not the verdict: what stayed unused is reported below, together with what was denied.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: wanted <= used(), timeout=DEADLINE, description="every grant used")
    finally:
        await daemon.stop()
    unused = sorted(wanted - used())
    denied = sorted(
        (call.method, call.path, call.query.get("watch", ""))
        for call in cluster.calls
        if not any(_allows(rule, call.attributes()) for rule in rules)
    )
    assert (unused, denied) == ([], []), (
        f"{service_account}: granted but never used: {unused}; made but not allowed: {denied}\n"
        f"{daemon.log.read_text()[-3000:]}"
    )


async def test_apiserver_rbac_is_exactly_what_it_uses(
    tmp_path: pathlib.Path, cluster: RecordingCluster, kubeconfig: pathlib.Path,
    etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts,
) -> None:
    daemon = await _start(
        tmp_path / "apiserver.log", "apiserver",
        "--cluster-name", OPTIONS.cluster_name, "--cluster-id", str(OPTIONS.cluster_id),
        "--etcd-endpoints", etcd.endpoint, "--etcd-ca", str(certs_dir.admin.ca),
        "--etcd-cert", str(certs_dir.admin.cert), "--etcd-key", str(certs_dir.admin.key),
        "--source", f"kubernetes:{kubeconfig}",
        "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
    )
    await _check(cluster, daemon, deploy_render.APISERVER)


async def test_agent_rbac_is_exactly_what_it_uses(
    tmp_path: pathlib.Path, cluster: RecordingCluster, kubeconfig: pathlib.Path,
) -> None:
    assert OPTIONS.peer_secrets_namespace == fake.PEER_NAMESPACE, "the fake serves the rendered namespace's Secrets"
    certs.init_cluster(tmp_path / "cluster-b", "cluster-b")
    peer = connect.local_trust(name="cluster-b", cluster_id=2, endpoints=("https://127.0.0.1:1",),
                               certs_dir=tmp_path / "cluster-b")
    cluster.put(fake.PEER_SECRETS, connect.peer_secret(peer, namespace=fake.PEER_NAMESPACE))
    # cluster-c's Secret is missing: still read (by name), never listed with the others.
    cluster.put(fake.CLUSTER_MESHES, connect.cluster_mesh(["cluster-b", "cluster-c"], namespace=fake.PEER_NAMESPACE))
    daemon = await _start(
        tmp_path / "agent.log", "agent",
        "--cluster-name", OPTIONS.cluster_name, "--cluster-id", str(OPTIONS.cluster_id), "--node-name", "node-1",
        "--clustermesh-resource", f"kubernetes:{kubeconfig}", "--clustermesh-namespace", fake.PEER_NAMESPACE,
        "--peer-tls-dir", str(tmp_path), "--local-source", f"kubernetes:{kubeconfig}",
        "--listen", f"unix:{tmp_path / 'agent.sock'}",
    )
    await _check(cluster, daemon, deploy_render.AGENT)
    secret_calls = [call.attributes() for call in cluster.calls if call.attributes().resource == "secrets"]
    assert {a.name for a in secret_calls} == {"cluster-b-secret", "cluster-c-secret"}, secret_calls


async def test_agent_rbac_with_a_mesh_config_directory_reads_no_secret(
    tmp_path: pathlib.Path, cluster: RecordingCluster, kubeconfig: pathlib.Path,
) -> None:
    options = deploy_render.Options(cluster_name="cluster-a", cluster_id=1,
                                    peer_source=deploy_render.PeerSource.MESH_CONFIG)
    mesh_config = tmp_path / "mesh-config"
    mesh_config.mkdir()
    daemon = await _start(
        tmp_path / "agent.log", "agent",
        "--cluster-name", options.cluster_name, "--cluster-id", str(options.cluster_id), "--node-name", "node-1",
        "--mesh-config", str(mesh_config), "--local-source", f"kubernetes:{kubeconfig}",
        "--listen", f"unix:{tmp_path / 'agent.sock'}",
    )
    await _check(cluster, daemon, deploy_render.AGENT, options)
