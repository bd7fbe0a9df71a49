"""Data-driven publishing cases: manifest files in, exact etcd keys and byte-exact values out, step by step.

Each file in tests/scenarios/apiserver/ is one case: a list of steps, each writing (or deleting) manifest
files in the directory the publisher's ManifestSource watches, optionally advancing the identity clock, and
stating the complete expected content of `cilium/state/` and `cilium/cluster-config/` with byte-exact
values. After each step the runner also checks that "nothing else is written": every key whose value the
step does not change keeps its mod revision (no rewrite). Cases may also expect a count of invalid objects
and log lines (bad input is reported, skipped, and the rest still published). Every case ends by checking
that each kind's sync canary exists.

A step:

    - description: what the step does and why
      files: {name.yaml: "<manifest text>", other.yaml: null}   # null deletes the file
      advance: 1000                                              # seconds on the identity clock
      invalid: 2                                                 # publisher's invalid objects so far
      logs: ["event=object.invalid object=Pod/ns/bad"]           # substrings of log lines of this step
      expect: {key: value, ...}                                  # the whole state after the step

Excludes: restarts and the process (test_daemon.py), the Kubernetes API source (test_kubernetes_source.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import pathlib
from typing import Any

import pytest
import yaml

from apiserver import publisher as publisher_module
from clustermesh import keys, kube
from clustermesh.etcd import client as etcd_client
from tests.apiserver.conftest import CLUSTER, canaries, state
from tests.helpers import eventually

SCENARIOS = pathlib.Path(__file__).resolve().parent.parent / "scenarios" / "apiserver"
CASES = sorted(SCENARIOS.glob("*.yaml"))


def _write_files(directory: pathlib.Path, files: dict[str, str | None]) -> None:
    for name, content in files.items():
        path = directory / name
        if content is None:
            path.unlink()
        else:
            # Rename into place so the source never reads a half-written file.
            partial = directory / f".{name}.partial"
            partial.write_text(content)
            partial.rename(path)


async def _matches(admin: etcd_client.EtcdClient, expected: dict[str, bytes], where: str) -> bool:
    current = await state(admin)
    assert {key: kv.value for key, kv in current.items()} == expected, where
    return True


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
async def test_scenario(case, tmp_path, admin, clock, start_publisher, caplog) -> None:
    scenario = yaml.safe_load(case.read_text())
    steps: list[dict[str, Any]] = scenario["steps"]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    _write_files(manifests, steps[0].get("files", {}))
    caplog.set_level(logging.INFO)
    source = kube.ManifestSource(manifests, kinds=publisher_module.SOURCE_KINDS)
    previous: dict[str, Any] = {}
    async with start_publisher(source, **scenario.get("options", {})) as running:
        for index, step in enumerate(steps):
            where = f"{case.name} step {index} ({step.get('description', '').strip()[:60]})"
            if index:
                caplog.clear()
                _write_files(manifests, step.get("files", {}))
            if "advance" in step:
                clock.advance(step["advance"])
                # One turn of the loop: a sleeper that woke (the GC tick) queues its work before ours.
                await asyncio.sleep(0)
            expected = {key: value.encode() for key, value in step["expect"].items()}

            await eventually(functools.partial(_matches, admin, expected, where), timeout=15, description=where)
            await running.settled()
            current = await state(admin)
            assert {key: kv.value for key, kv in current.items()} == expected, where
            for key, kv in current.items():
                if key in previous and previous[key].value == kv.value:
                    assert previous[key].mod_revision == kv.mod_revision, f"{where}: {key} was rewritten"
            previous = current
            if "invalid" in step:
                assert running.publisher.invalid_objects == step["invalid"], where
            for line in step.get("logs", ()):
                assert any(line in message for message in caplog.messages), f"{where}: no log line with {line!r}"
    written = await canaries(admin)
    assert set(written) == {keys.synced_canary_key(CLUSTER, kind) for kind in publisher_module.KINDS}
