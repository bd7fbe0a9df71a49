"""The control endpoint of a running mesh (clustermesh.local_mesh.control), spoken to as a drill speaks to it.

Covered against one `clustermesh up` (2 clusters x 1 agent): status; requests refused with a reason (unknown
cluster or node, an action that does not fit the component or its state, missing fields, a line that is not
JSON) without harming the connection; the socket is the owner's only; faults a connection leaves behind are
undone when it closes (a stopped etcd continued, a cut proxy forwarding); a killed apiserver is restarted by
`up`; a certificate rotation reaches the peers' mesh-config. Not covered: the drills built on it
(test_scenarios.py).
"""

from __future__ import annotations

import asyncio
import pathlib
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from clustermesh.aio import tcp_proxy
from clustermesh.local_mesh import control, mesh_file
from tests import helpers
from tests.drill.conftest import running_mesh

pytestmark = pytest.mark.timeout(120)

Op = control.Op
ETCD = control.Component.ETCD
APISERVER = control.Component.APISERVER


@pytest.fixture(scope="module")
def mesh_dir() -> Iterator[pathlib.Path]:
    with running_mesh("cmc-") as directory:
        yield directory


def cluster_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["clusters"] if c["name"] == name)
    return found


async def connect(mesh_dir: pathlib.Path) -> control.ControlClient:
    return await control.ControlClient.connect(mesh_file.load(mesh_dir).control)


async def test_status_and_refusals(mesh_dir: pathlib.Path) -> None:
    mesh = mesh_file.load(mesh_dir)
    assert mesh.control == f"unix:{mesh_dir / control.SOCKET_NAME}"
    assert stat.S_IMODE((mesh_dir / control.SOCKET_NAME).stat().st_mode) == 0o600
    async with await connect(mesh_dir) as client:
        status = await client.call(Op.STATUS)
        a = cluster_status(status, "cluster-a")
        assert a["etcd"]["state"] == "running" and a["proxy"]["mode"] == "forward"
        assert f"https://{a['proxy']['address']}" == mesh.cluster("cluster-a").etcd.endpoints[0]
        assert [agent["node"] for agent in a["agents"]] == ["cluster-a-node-1"]

        refusals = [
            ({"op": Op.KILL, "cluster": "cluster-z", "component": ETCD}, "no cluster 'cluster-z'"),
            ({"op": Op.STOP, "cluster": "cluster-a", "component": APISERVER}, "applies to an etcd only"),
            ({"op": Op.CONT, "cluster": "cluster-a", "component": ETCD}, "it is running"),
            ({"op": Op.START, "cluster": "cluster-a", "component": ETCD}, "it is running"),
            ({"op": Op.KILL, "cluster": "cluster-a", "component": control.Component.AGENT, "node": "nope"},
             "no agent on node 'nope'"),
            ({"op": Op.KILL, "cluster": "cluster-a"}, "`component` is required"),
            ({"op": Op.PROXY, "cluster": "cluster-a"}, "`mode` is required"),
        ]
        for request, reason in refusals:
            with pytest.raises(control.ControlError, match=reason):
                await client.call(**request)
        # The connection survives its refused requests.
        assert cluster_status(await client.call(Op.STATUS), "cluster-a")["etcd"]["state"] == "running"

    reader, writer = await asyncio.open_unix_connection(str(mesh_dir / control.SOCKET_NAME))
    writer.write(b'{"op": "melt"}\nnot json\n')
    await writer.drain()
    for _ in range(2):
        line = await reader.readline()
        assert b'"ok":false' in line and b"bad request" in line
    writer.close()
    await writer.wait_closed()


async def test_faults_are_undone_when_their_connection_closes(mesh_dir: pathlib.Path) -> None:
    breaker = await connect(mesh_dir)
    await breaker.call(Op.STOP, cluster="cluster-a", component=ETCD)
    await breaker.call(Op.PROXY, cluster="cluster-b", mode=tcp_proxy.Mode.BLACKHOLE)
    async with await connect(mesh_dir) as watcher:
        status = await watcher.call(Op.STATUS)
        assert cluster_status(status, "cluster-a")["etcd"]["state"] == "paused"
        assert cluster_status(status, "cluster-b")["proxy"]["mode"] == "blackhole"
        await breaker.close()

        async def whole() -> bool:
            now = await watcher.call(Op.STATUS)
            return (cluster_status(now, "cluster-a")["etcd"]["state"] == "running"
                    and cluster_status(now, "cluster-b")["proxy"]["mode"] == "forward")

        await helpers.eventually(whole, timeout=10, interval=0.05, description="the closed connection's faults undone")
        # Healed explicitly, a fault leaves nothing to undo: kill + start on one connection.
        await watcher.call(Op.KILL, cluster="cluster-b", component=ETCD)
        assert cluster_status(await watcher.call(Op.STATUS), "cluster-b")["etcd"]["state"] == "stopped"
        await watcher.call(Op.START, cluster="cluster-b", component=ETCD)
        assert cluster_status(await watcher.call(Op.STATUS), "cluster-b")["etcd"]["state"] == "running"


async def test_a_killed_apiserver_is_restarted(mesh_dir: pathlib.Path) -> None:
    async with await connect(mesh_dir) as client:
        before = cluster_status(await client.call(Op.STATUS), "cluster-b")["apiserver"]
        await client.call(Op.KILL, cluster="cluster-b", component=APISERVER)

        async def restarted() -> bool:
            now = cluster_status(await client.call(Op.STATUS), "cluster-b")["apiserver"]
            return bool(now["starts"] == before["starts"] + 1 and now["state"] == "running"
                        and not now["restarting"] and now["pid"] != before["pid"])

        await helpers.eventually(restarted, timeout=30, interval=0.05, description="the apiserver restarted")
    await helpers.eventually(lambda: mesh_file.load(mesh_dir).cluster("cluster-b").apiserver.pid != before["pid"],
                             timeout=5, description="mesh.json names the new pid")


async def test_rotation_reaches_the_peers(mesh_dir: pathlib.Path) -> None:
    mesh = mesh_file.load(mesh_dir)
    certs_dir = pathlib.Path(mesh.cluster("cluster-a").certs)
    peer_copy = pathlib.Path(mesh.cluster("cluster-b").agents[0].mesh_config) / "cluster-a.etcd-client.crt"
    old = (certs_dir / "remote.crt").read_bytes()
    assert peer_copy.read_bytes() == old
    async with await connect(mesh_dir) as client:
        written = await client.call(Op.ROTATE_CERTS, cluster="cluster-a")
    assert str(certs_dir / "remote.crt") in written and str(certs_dir / "server.crt") in written
    new = (certs_dir / "remote.crt").read_bytes()
    assert new != old and peer_copy.read_bytes() == new
