"""End-to-end: every drill scenario against one running mesh (2 clusters x 1 agent, `clustermesh up` in a process
of its own), with churn in the broken cluster.

Covered: each scenario ends with a clean verdict (zero stale, zero missing, every check passed), every phase it
expects is on its timeline (the drill's own once, an agent phase for every affected agent), the app manifest is
back byte for byte, and the drill leaves no task of its own running. The CLI runs etcd-hang as an operator would
(exit 0, the JSON report's keys, a PNG), and a Ctrl-C in the middle of a drill heals the fault (exit 130, the
etcd serving again, the manifest restored). Durations are asserted nowhere: bench/failover.py measures them.
Not covered here: the control protocol's refusals and its undo-on-disconnect (test_control.py), the pure parts
(test_units.py).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import sys
from collections.abc import Iterator

import pytest

from clustermesh import drill
from clustermesh.drill import timeline
from clustermesh.local_mesh import control, manifests, mesh_file
from tests.drill.conftest import running_mesh

pytestmark = pytest.mark.timeout(240)

DURATION = 4.0
CHURN = 2.0
AGENT_PHASES = {"peer.disconnected", "peer.reconnected", "peer.ready", "peer.revoked", "peer.restored",
                "dns.failover", "dns.restored"}


@pytest.fixture(scope="module")
def mesh_dir() -> Iterator[pathlib.Path]:
    with running_mesh("cmd-") as directory:
        yield directory


def app_file(mesh_dir: pathlib.Path, cluster: str = "cluster-a") -> pathlib.Path:
    return mesh_dir / cluster / "manifests" / manifests.APP_FILE


@pytest.mark.parametrize("scenario", list(drill.SCENARIOS))
async def test_scenario_is_clean_with_every_phase(scenario: str, mesh_dir: pathlib.Path) -> None:
    original = app_file(mesh_dir).read_bytes()
    before = asyncio.all_tasks()
    result = await drill.run(drill.DrillConfig(mesh=mesh_dir, scenario=scenario, cluster="cluster-a",
                                               duration=DURATION, churn=CHURN, settle_timeout=30))
    # grpc.aio finishes a closed call's status in a task of its own, a moment later: not the drill's.
    left = [task for task in asyncio.all_tasks() - before if "_AioCall" not in repr(task)]
    assert not left, f"the drill left tasks running: {left}"

    if result.verdict != "clean":
        pytest.fail("\n".join([
            f"{scenario}: {result.verdict}", *(f"check {c.name}: {c.detail}" for c in result.checks if not c.ok),
            *(f"{a.agent}: {a.stale} stale, {a.missing} missing {a.examples} {a.error}" for a in result.agents),
            *(f"{s.subject}: {s.stale} stale, {s.missing} missing {s.examples}" for s in result.sources),
            *result.notes, *(f"{e.t:+.3f} {e.agent} {e.event} {e.peer} {e.detail}" for e in result.timeline),
        ]))
    assert (result.stale, result.missing) == (0, 0)
    assert result.churn_changes >= 1
    assert app_file(mesh_dir).read_bytes() == original

    seen = {(entry.event, entry.agent) for entry in result.timeline}
    affected = [agent.agent for agent in result.agents if agent.affected]
    assert affected
    for phase in result.expected_phases:
        if phase == "cache.converged":
            owners = [agent.agent for agent in result.agents]
        elif phase in AGENT_PHASES:
            owners = affected
        else:
            assert any(event == phase for event, _ in seen), (phase, sorted(seen))
            continue
        assert all((phase, owner) in seen for owner in owners), (phase, sorted(seen))
    assert result.timeline[-1].event == timeline.EventName.VERDICT.value
    if scenario in ("etcd-kill", "etcd-hang", "partition"):
        # The test mesh's agents have a cache TTL that fits the fault: revocation and DNS failover must show.
        assert {"peer.revoked", "dns.failover", "dns.restored"} <= set(result.expected_phases)
        assert result.failover_s is not None and result.detection_s is not None
    if scenario == "partition":
        assert result.method == "tcp-proxy"
    if scenario == "backends-down":
        assert result.failover_s is not None


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await process.communicate()
    finally:
        await reap(process)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill a drill the test gave up on (a failed assertion or a timeout): the test owns it."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_cli_writes_the_report_and_the_plot(mesh_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report_path, plot_path = tmp_path / "drill.json", tmp_path / "drill.png"
    code, out, err = await run_cli("drill", "etcd-hang", "--mesh", str(mesh_dir), "--duration", str(DURATION),
                                   "--churn", str(CHURN), "-o", "json", "--report", str(report_path),
                                   "--plot", str(plot_path))
    assert code == 0, err
    printed = json.loads(out)
    assert printed == json.loads(report_path.read_text())
    assert {"scenario", "verdict", "stale", "missing", "detection_s", "reconverge_s", "failover_s",
            "timeline"} <= set(printed)
    assert printed["scenario"] == "etcd-hang" and printed["verdict"] == "clean"
    assert all({"t", "agent", "event"} <= set(entry) for entry in printed["timeline"])
    assert plot_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    code, out, err = await run_cli("drill", "backends-down", "--mesh", str(mesh_dir), "--duration", "1")
    assert code == 0, err
    assert "backends-down" in out and "clean" in out and "dns.failover" in out


async def test_ctrl_c_heals_the_fault_and_restores_the_manifest(mesh_dir: pathlib.Path) -> None:
    original = app_file(mesh_dir).read_bytes()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh", "drill", "etcd-hang", "--mesh", str(mesh_dir), "--duration", "600",
        "--churn", str(CHURN), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        lines = []
        async with asyncio.timeout(60):
            while b"holding" not in (line := await process.stderr.readline()):
                assert line, b"".join(lines).decode()
                lines.append(line)
        mesh = mesh_file.load(mesh_dir)
        async with await control.ControlClient.connect(mesh.control) as client:
            status = await client.call(control.Op.STATUS)
            assert status["clusters"][0]["etcd"]["state"] == "paused"
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                _, err = await process.communicate()
            assert process.returncode == 130, err.decode()
            assert b"the mesh is as the drill found it" in err
            status = await client.call(control.Op.STATUS)
            assert status["clusters"][0]["etcd"]["state"] == "running"
    finally:
        await reap(process)
    assert app_file(mesh_dir).read_bytes() == original
