"""The drill's parts that need no mesh: the app manifest's generations, the comparable entries (checked against
the agent's own record → API conversion, so the verdict compares like with like), the diff's counting, the
timeline, churn's schedule, the plot, and option validation.

Not covered: anything that needs running processes (test_scenarios.py, test_control.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib

import pytest
import yaml

from agent import cache as mesh_cache
from agent import grpc_server
from clustermesh import records
from clustermesh.drill import app_manifest, churn, entries, plot, report, runner, timeline, verdict
from clustermesh.errors import ConfigError
from clustermesh.keys import Kind
from clustermesh.local_mesh import control, layout, manifests, mesh, mesh_file
from tests import helpers


@pytest.fixture
def plan(tmp_path: pathlib.Path) -> layout.ClusterPlan:
    cluster = layout.plan(tmp_path, clusters=2, nodes=2)[0]
    layout.make_directories(cluster)
    manifests.ensure_example(cluster)
    return cluster


@pytest.fixture
def app(plan: layout.ClusterPlan) -> app_manifest.AppManifest:
    return app_manifest.AppManifest(plan, (plan.paths.manifests / manifests.APP_FILE).read_bytes())


def documents(app: app_manifest.AppManifest) -> list[dict[str, object]]:
    return list(yaml.safe_load_all(app.path.read_bytes()))


# ----------------------------------------------------------------------------------------------------
# the app manifest


def test_generations_replace_every_pod_and_deletes_show(app: app_manifest.AppManifest,
                                                        plan: layout.ClusterPlan) -> None:
    first = app.expectation()
    assert first.pod_ips == first.backend_ips == {"10.1.1.10", "10.1.2.10"}
    seen = set(first.pod_ips)
    for generation in range(1, 7):
        app.step()
        now = app.expectation()
        assert now.pod_ips.isdisjoint(seen), f"generation {generation} reused an IP"
        assert len(now.pod_ips) == app.base_replicas + generation % 3
        assert now.backend_ips == now.pod_ips
        seen |= now.pod_ips
        assert now.known_ips == seen
        for pod in (doc for doc in documents(app) if isinstance(doc, dict) and doc["kind"] == "Pod"):
            node = next(n for n in plan.nodes if n.name == pod["spec"]["nodeName"])
            assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.pod_cidr)
            assert pod["metadata"]["name"].startswith(f"{manifests.APP}-g{generation}-")


def test_not_ready_keeps_the_pods_and_drops_the_backends(app: app_manifest.AppManifest) -> None:
    app.set_affinity("local")
    app.set_ready(False)
    expect = app.expectation()
    assert expect.pod_ips and not expect.backend_ips
    service = documents(app)[0]
    assert isinstance(service, dict) and service["metadata"]["annotations"][app_manifest.AFFINITY_ANNOTATION] == "local"
    app.step()
    assert not app.expectation().backend_ips, "churn keeps the endpoints not ready"
    app.set_ready(True)
    assert app.expectation().backend_ips == app.expectation().pod_ips


def test_restore_puts_the_original_bytes_back(app: app_manifest.AppManifest) -> None:
    original = app.path.read_bytes()
    app.restore()
    assert app.writes == 0 and app.path.read_bytes() == original
    app.step()
    app.set_ready(False)
    assert app.path.read_bytes() != original
    app.restore()
    app.restore()
    assert app.path.read_bytes() == original
    assert app.expectation().pod_ips == {"10.1.1.10", "10.1.2.10"}
    assert app.expectation().known_ips > app.expectation().pod_ips, "lost deletes of the drill's pods still show"


async def test_churn_steps_at_its_rate_until_cancelled(app: app_manifest.AppManifest) -> None:
    churner = churn.Churn(app, rate=50)
    ready = asyncio.Event()
    task = asyncio.create_task(churner.run(ready=ready))
    await ready.wait()
    assert churner.changes >= 1 and app.generation == churner.changes
    await helpers.eventually(lambda: churner.changes >= 3, timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    changes = churner.changes
    assert app.generation == changes
    with pytest.raises(ValueError):
        churn.Churn(app, rate=0)


# ----------------------------------------------------------------------------------------------------
# entries: the truth's form equals the agent's own conversion of the same record


NODE = records.Node(
    name="cluster-a-node-1", cluster="cluster-a", cluster_id=1,
    ip_addresses=(records.NodeAddress(type="InternalIP", ip="127.0.1.1"),),
    ipv4_alloc_cidr=records.CIDR(ip="10.1.1.0", mask=bytes([255, 255, 255, 0])),
    ipv4_health_ip="10.1.1.2", wireguard_pub_key="key",
)
SERVICE = records.ClusterService(
    cluster="cluster-a", namespace="my-namespace", name="my-app", cluster_id=1, shared=True,
    frontends={"10.96.1.10": {"http": records.L4Addr(protocol="TCP", port=80)}},
    backends={"10.1.1.10": {"http": records.L4Addr(protocol="TCP", port=8080)},
              "10.1.2.10": {"http": records.L4Addr(protocol="TCP", port=8080)}},
)
IDENTITY = records.Identity(id=65600, labels="k8s:app=my-app;")
IPCACHE = records.IPIdentityPair(ip="10.1.1.10", host_ip="127.0.1.1", id=65600, k8s_namespace="my-namespace",
                                 k8s_pod_name="my-app-0")


def test_entries_match_the_agents_api_form() -> None:
    assert entries.node("cluster-a", NODE) == entries.node_message(grpc_server.node_message("cluster-a", NODE))
    assert entries.service("cluster-a", SERVICE) == entries.service_message(
        grpc_server.service_message("cluster-a", SERVICE))
    assert entries.identity("cluster-a", IDENTITY) == entries.identity_message(
        grpc_server.identity_message("cluster-a", IDENTITY))
    cached = mesh_cache.IPCacheEntry(IPCACHE.prefix_string, IPCACHE.id, IPCACHE.host_ip, IPCACHE.key,
                                     IPCACHE.k8s_namespace, IPCACHE.k8s_pod_name)  # what the agent keeps of it
    assert entries.ipcache("cluster-a", IPCACHE) == entries.ipcache_message(
        grpc_server.ipcache_message("cluster-a", cached))
    key, fingerprint = entries.service("cluster-a", SERVICE)
    assert str(key) == "services cluster-a/my-namespace/my-app"
    assert entries.backend_ips(fingerprint) == {"10.1.1.10", "10.1.2.10"}
    assert entries.ipcache_namespace(entries.ipcache("cluster-a", IPCACHE)[1]) == "my-namespace"


def test_a_changed_entry_is_stale_not_missing() -> None:
    key, value = entries.ipcache("cluster-a", IPCACHE)
    gone = entries.EntryKey(Kind.IPCACHE, "cluster-a", "10.1.9.9")
    new = entries.EntryKey(Kind.IPCACHE, "cluster-a", "10.1.8.8")
    row = verdict._diff("n1", "cluster-b", 0.0, have={key: value, gone: value},
                        want={key: ("other",), new: value})
    assert (row.stale, row.missing) == (2, 1) and not row.clean
    assert row.examples == (f"stale {key}", f"stale {gone}", f"missing {new}")
    assert verdict._diff("n1", "cluster-b", 0.0, have={key: value}, want={key: value}).clean


# ----------------------------------------------------------------------------------------------------
# timeline, report, plot


def test_timeline_queries() -> None:
    events = timeline.Timeline()
    assert events.origin is None
    late = events.add(12.0, "n1", timeline.EventName.PEER_READY, peer="cluster-a")
    events.add(10.0, timeline.DRILL, timeline.EventName.FAULT_INJECTED, peer="cluster-a")
    early = events.add(11.0, "n1", timeline.EventName.PEER_DISCONNECTED, peer="cluster-a")
    assert events.origin == 10.0
    assert events.first(timeline.EventName.PEER_DISCONNECTED, agent="n1") == early
    assert events.first(timeline.EventName.PEER_READY, after=12.5) is None
    assert [e.at for e in events.events()] == [10.0, 11.0, 12.0]
    moved = events.retime(late, 11.5)
    assert moved.at == 11.5 and events.first(timeline.EventName.PEER_READY) == moved and len(events) == 3


def sample_report() -> report.Report:
    entry = report.TimelineEntry
    return report.Report(
        scenario="etcd-hang", cluster="cluster-a", verdict="clean", stale=0, missing=0, detection_s=1.2,
        failover_s=2.0, revoked_s=1.9, reconverge_s=0.4, method="", duration_s=4.0, churn_rate=2.0,
        churn_changes=8, started_at="2026-01-01T00:00:00.000+00:00", mesh="/tmp/m",
        agents=[report.AgentResult(agent="n1", cluster="cluster-a", affected=False),
                report.AgentResult(agent="n2", cluster="cluster-b", affected=True, detection_s=1.2)],
        sources=[], checks=[report.CheckResult(name="every phase", ok=True)], expected_phases=[], notes=[],
        timeline=[entry(t=0.0, agent="drill", event="fault.injected"),
                  entry(t=1.2, agent="n2", event="peer.disconnected", peer="cluster-a"),
                  entry(t=2.0, agent="n2", event="dns.failover", peer="cluster-a"),
                  entry(t=4.0, agent="drill", event="fault.healed"),
                  entry(t=4.3, agent="n2", event="peer.ready", peer="cluster-a"),
                  entry(t=4.31, agent="n2", event="dns.restored", peer="cluster-a"),
                  entry(t=4.4, agent="n2", event="cache.converged"),
                  entry(t=4.5, agent="drill", event="verdict")],
    )


def test_report_json_and_plot(tmp_path: pathlib.Path) -> None:
    result = sample_report()
    assert report.to_builtins(result)["verdict"] == "clean"
    assert b'"detection_s": 1.2' in report.encode(result)
    path = tmp_path / "drill.png"
    plot.write(result, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(plot.draw(result).axes) == 3, "one lane for the drill, one per agent"


def test_options_are_validated(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="unknown scenario 'etcd-melt'"):
        runner.DrillConfig(mesh=tmp_path, scenario="etcd-melt")
    for options in ({"duration": 0}, {"churn": -1}, {"settle_timeout": 0}):
        with pytest.raises(ConfigError):
            runner.DrillConfig(mesh=tmp_path, scenario="etcd-hang", **options)  # type: ignore[arg-type]


def test_up_records_the_daemon_flags_drills_depend_on(tmp_path: pathlib.Path) -> None:
    options = mesh.AgentOptions(keepalive_interval=1, keepalive_timeout=0.5, cache_ttl=0)
    assert options.args() == ["--keepalive-interval", "1", "--keepalive-timeout", "0.5", "--cache-ttl", "0"]
    assert mesh.AgentOptions().args() == [] and mesh.ApiserverOptions().args() == []
    assert mesh.ApiserverOptions(heartbeat_interval=2).args() == ["--heartbeat-interval", "2"]
    for bad in ({"keepalive_interval": 0}, {"keepalive_timeout": -1}, {"cache_ttl": -1}):
        with pytest.raises(ConfigError):
            mesh.AgentOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        mesh.ApiserverOptions(heartbeat_interval=0)
    local = mesh.LocalMesh(mesh.Config(directory=tmp_path, clusters=2, nodes=1, agent_options=options,
                                       apiserver_options=mesh.ApiserverOptions(heartbeat_interval=2)))
    recorded = mesh_file.decode(mesh_file.encode(local.snapshot()))
    assert recorded.agent_options == mesh_file.AgentOptions(keepalive_interval=1, keepalive_timeout=0.5, cache_ttl=0)
    assert recorded.apiserver_options.heartbeat_interval == 2
    assert recorded.control == "", "no control endpoint before the mesh runs"


def write_mesh_file(directory: pathlib.Path, *, control: str = "", listen: str = "") -> None:
    clusters = [
        mesh_file.Cluster(
            name=name, id=index, pod_cidrs=[f"10.{index}.0.0/16"],
            etcd=mesh_file.Etcd(endpoints=[f"https://127.0.0.1:{2000 + index}"], listen=listen, ca="ca", cert="c",
                                key="k"),
            apiserver=mesh_file.Apiserver(grpc="127.0.0.1:1", metrics="127.0.0.1:2"),
            agents=[mesh_file.Agent(node=f"{name}-node-1", grpc=f"unix:{directory}/{name}.sock", dns="", metrics="")],
        )
        for index, name in ((1, "cluster-a"), (2, "cluster-b"))
    ]
    mesh_file.write(directory, mesh_file.MeshFile(clusters=clusters, dir=str(directory), control=control))


async def test_a_mesh_file_that_does_not_fit_the_scenario_is_refused(tmp_path: pathlib.Path) -> None:
    write_mesh_file(tmp_path)
    with pytest.raises(ConfigError, match="acts through the mesh's control endpoint"):
        await runner.run(runner.DrillConfig(mesh=tmp_path, scenario="etcd-hang"))
    with pytest.raises(ConfigError, match="no cluster 'cluster-z'"):
        await runner.run(runner.DrillConfig(mesh=tmp_path, scenario="etcd-hang", cluster="cluster-z"))
    with pytest.raises(ConfigError, match="has no manifests directory"):
        await runner.run(runner.DrillConfig(mesh=tmp_path, scenario="backends-down"))
    write_mesh_file(tmp_path, control=f"unix:{tmp_path}/control.sock")
    with pytest.raises(control.ControlError, match="cannot reach the control endpoint"):
        await runner.run(runner.DrillConfig(mesh=tmp_path, scenario="partition"))
